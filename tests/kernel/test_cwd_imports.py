"""Issue #11.1: resreap runs as root; its Python children must never import
a module from the directory it was started in (a user may write there)."""

from __future__ import annotations

import os
import subprocess

import pytest

from procs import patience

pytestmark = [pytest.mark.kernel]

PLANT = "open({marker!r}, 'w').write('imported as root')\n"


@pytest.mark.parametrize("argv", [["doctor"], ["trace", "--backend", "bpf"]])
def test_modules_in_the_working_directory_are_never_imported(resreap_bin, bpf_ready, tmp_path, argv):
    cwd = tmp_path / "writable"
    cwd.mkdir()
    os.chmod(cwd, 0o777)
    marker = tmp_path / "owned"
    for name in ("json", "bcc", "socket", "struct", "ctypes", "resreap"):
        (cwd / f"{name}.py").write_text(PLANT.format(marker=str(marker)))
    proc = subprocess.Popen([resreap_bin, *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        if argv[0] == "trace":
            # Tracing has begun once it says so: the loader has run.
            line = proc.stderr.readline()
            assert "Tracing" in line, line
            proc.terminate()
        out, err = proc.communicate(timeout=patience(60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not marker.exists(), f"a planted module ran: {out}{err}"
    if argv[0] == "doctor":
        assert "bcc" in out and "importable" in out
