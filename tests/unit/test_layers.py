"""The layout is the architecture: resreap's subpackages are layers, each
importing only from those below it (import-linter checks the contract in
pyproject.toml), and the README's layout names every module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_are_kept():
    done = _lint(ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("module, bad_import", [
    ("host/procinfo.py", "from resreap.engine import watch"),   # a fact reaching up
    ("engine/killer.py", "from resreap.ops import metrics"),    # the engine reaching ops
    ("model.py", "from resreap.host import procinfo"),          # the shared base reaching up
])
def test_a_violation_fails_the_check(tmp_path, module, bad_import):
    copy = tmp_path / "resreap"
    shutil.copytree(ROOT / "resreap", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    done = _lint(tmp_path, tmp_path)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("Layout:"):]
    layout = layout.split("\n\n")[0]
    modules = sorted(str(p.relative_to(ROOT / "resreap").with_suffix(""))
                     for p in (ROOT / "resreap").rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert not missing, f"README's layout lacks {missing}"
    named = set(re.findall(r"`((?:host|sources|engine|ops)/[a-z_]+)`", layout))
    assert named <= set(modules), f"README names modules that do not exist: {named - set(modules)}"
