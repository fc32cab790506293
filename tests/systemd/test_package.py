"""The Debian package's whole life, inside the real systemd box (#23): built
from the tree by scripts/build-deb on the host, installed offline (the box
has no network), a leaking service reaped and started again, an upgrade to
a higher version that keeps a locally edited conffile and restarts the
daemon on the new code, removal (stopped, config kept) and purge (all
gone).  The tests run in this order, on one box of their own."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from machine import ROOT, Machine, rootfs, wait_for
from sidebyside import host_share
from test_unit import CLIENTS, CONFIG, LEAKY

pytestmark = [pytest.mark.systemd, pytest.mark.xdist_group("systemd")]

UPGRADE = "+upgrade1"


def _version() -> str:
    from resreap import __version__

    return __version__


def _repack(deb: Path, out: Path, version: str) -> Path:
    """The same package at a higher version, its code saying so: what a
    rebuild of the next release is, for the upgrade (the box is offline)."""
    with tempfile.TemporaryDirectory() as tree:
        subprocess.run(["dpkg-deb", "-R", str(deb), tree], check=True)
        control = Path(tree, "DEBIAN/control")
        control.write_text(re.sub(r"(?m)^Version: .*$", f"Version: {version}",
                                  control.read_text()))
        init = next(Path(tree, "opt/resreap/venv/lib").glob("python3*/site-packages/resreap/"
                                                            "__init__.py"))
        init.write_text(re.sub(r'__version__ = ".*"', f'__version__ = "{version}"',
                               init.read_text()))
        for cache in init.parent.glob("__pycache__/__init__.*.pyc"):
            cache.unlink()
        sums = Path(tree, "DEBIAN/md5sums")
        sums.write_text(subprocess.run(
            ["sh", "-c", "find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | "
                         "xargs -0 md5sum | sed 's#  \\./#  #'"],
            cwd=tree, check=True, capture_output=True, text=True).stdout)
        target = out / f"resreap_{version}_amd64.deb"
        subprocess.run(["dpkg-deb", "-b", "-Zgzip", tree, str(target)], check=True,
                       capture_output=True)
    return target


@pytest.fixture(scope="module")
def box(root_ready, tmp_path_factory):
    debs = tmp_path_factory.mktemp("debs")
    log = Path(tempfile.mkstemp(prefix="resreap-nspawn-deb-", suffix=".log")[1])
    machine = None
    try:
        with host_share(tmp_path_factory):
            tree = rootfs()
            built = subprocess.run([str(ROOT / "scripts/build-deb"), str(debs)],
                                   capture_output=True, text=True, timeout=900)
            assert built.returncode == 0, built.stderr[-3000:]
            deb = next(debs.glob(f"resreap_{_version()}_*.deb"))
            _repack(deb, debs, _version() + UPGRADE)
            machine = Machine(tree, debs, log)
        yield machine
    finally:
        if machine is not None:
            machine.close()
        log.unlink(missing_ok=True)


def _main_pid(box: Machine) -> int:
    return int(box.show("resreap", "MainPID") or 0)


def _started(box: Machine) -> list[str]:
    return [line for line in box.journal("resreap").splitlines() if line.startswith("start backend=")]


def test_1_install_enables_and_starts_it(box):
    box.run("dpkg", "-i", f"/wheels/resreap_{_version()}_amd64.deb", timeout=300)
    assert box.run("systemctl", "is-enabled", "resreap").stdout.strip() == "enabled"
    wait_for("the start line", lambda: _started(box))
    line = _started(box)[-1]
    assert "backend=bpf loader=core" in line and f"version={_version()}" in line, line
    assert box.run("resreap", "--version").stdout.strip() == f"resreap {_version()}"
    conffiles = box.run("dpkg-query", "-W", "-f=${Conffiles}", "resreap").stdout
    assert "/etc/resreap/resreap.toml" in conffiles
    for path in ("/usr/share/man/man8/resreap.8.gz", "/usr/share/bash-completion/completions/resreap",
                 "/usr/share/doc/resreap/examples/network.conf"):
        box.run("test", "-s", path)
    # No compiler came with it: nothing of bcc, LLVM or clang.
    assert box.sh("command -v clang clang-14 || python3 -c 'import bcc' 2>/dev/null || echo none",
                  check=False).stdout.strip() == "none"


def test_2_a_leaking_service_is_reaped_and_started_again(box):
    box.sh(f"cat > /etc/resreap/resreap.toml <<'EOF'\n{CONFIG}EOF\n"  # a local edit
           f"cat > /etc/systemd/system/leaky.service <<'EOF'\n{LEAKY}EOF\n"
           "systemctl daemon-reload && systemctl restart resreap && systemctl start leaky")
    first = wait_for("leaky's main pid", lambda: int(box.show("leaky", "MainPID") or 0))
    wait_for("leaky to listen", lambda: ":7000" in box.run("ss", "-tln").stdout)
    box.run("python3", "-c", CLIENTS)
    line = wait_for("the outcome line", lambda: [
        ln for ln in box.journal("resreap").splitlines() if f"outcome pid={first} " in ln])[0]
    assert "result=terminated" in line and "revive=started" in line, line
    again = wait_for("leaky to come back", lambda: int(box.show("leaky", "MainPID") or 0))
    assert again != first


def test_3_upgrade_keeps_the_edited_conffile_and_runs_the_new_code(box):
    before = _main_pid(box)
    new = _version() + UPGRADE
    box.run("dpkg", "-i", f"/wheels/resreap_{new}_amd64.deb", timeout=300)
    assert box.run("cat", "/etc/resreap/resreap.toml").stdout == CONFIG
    wait_for("the new daemon", lambda: f"version={new}" in (_started(box) or [""])[-1])
    assert _main_pid(box) not in (0, before)
    assert box.run("resreap", "--version").stdout.strip() == f"resreap {new}"
    assert box.show("resreap", "ActiveState") == "active"


def test_4_remove_stops_the_daemon_and_keeps_the_config(box):
    box.run("dpkg", "-r", "resreap", timeout=300)
    assert box.show("resreap", "ActiveState") in ("inactive", "failed", "")
    assert box.sh("pgrep -x resreap || echo none").stdout.strip() == "none"
    assert box.run("cat", "/etc/resreap/resreap.toml").stdout == CONFIG
    assert box.sh("ls /opt/resreap/venv /usr/bin/resreap 2>/dev/null | wc -l").stdout.strip() == "0"


def test_5_purge_leaves_nothing(box):
    box.run("dpkg", "-P", "resreap", timeout=300)
    left = box.sh("ls -d /etc/resreap /opt/resreap /var/log/resreap /run/resreap "
                  "/lib/systemd/system/resreap.service /usr/share/man/man8/resreap.8.gz "
                  "2>/dev/null || true").stdout.split()
    assert left == []
    status = box.run("dpkg-query", "-W", "-f=${Status}", "resreap", check=False).stdout
    assert "installed" not in status.replace("not-installed", "")
