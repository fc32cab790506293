"""Debian 12 trees made by debootstrap, cached: the systemd box's root
(tests/systemd/machine.py) and the container image's base
(tests/image/test_image.py).  Made once per package list (about a minute,
from the apt mirror) in RESREAP_CI_CACHE (default /var/cache/resreap-ci)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("RESREAP_CI_CACHE", "/var/cache/resreap-ci"))
MIRROR = os.environ.get("RESREAP_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def debian_tree(packages: list[str]) -> Path:
    """The cached Debian 12 (minbase) tree with ``packages``, made if
    missing; a tree is renamed into place only once complete."""
    tag = hashlib.sha256(" ".join(packages).encode()).hexdigest()[:10]
    tree = CACHE / f"bookworm-{tag}"
    if tree.is_dir():
        return tree
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"{tree.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
                    "bookworm", str(partial), MIRROR],
                   check=True, stdout=subprocess.DEVNULL, timeout=900)
    partial.rename(tree)
    return tree
