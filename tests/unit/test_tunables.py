"""The RESREAP_* knobs: validated once, one-line errors naming the
variable (a bad one was a traceback at import, and a ring size that is
not a power of two reached the kernel)."""

from __future__ import annotations

import pytest

from resreap import tunables
from resreap.errors import UsageError


def test_defaults_without_any_knob():
    assert tunables.read({}) == tunables.Tunables()


def test_each_knob_is_read():
    got = tunables.read({"RESREAP_RINGBUF_PAGES": "1", "RESREAP_PENDING_MAX": "1",
                         "RESREAP_FIRST_PASS": "0", "RESREAP_SOCKET_TABLE": "procfs",
                         "RESREAP_LOCK": "/run/x/watch.lock", "RESREAP_BPF_LOADER": "bcc"})
    assert got == tunables.Tunables(1, 1, False, "procfs", "/run/x/watch.lock", "bcc")


@pytest.mark.parametrize("name, value, says", [
    ("RESREAP_RINGBUF_PAGES", "3", "power of two"),
    ("RESREAP_RINGBUF_PAGES", "lots", "whole number"),
    ("RESREAP_RINGBUF_PAGES", "0", "from 1"),
    ("RESREAP_PENDING_MAX", "-5", "whole number"),
    ("RESREAP_FIRST_PASS", "no", "0 or 1"),
    ("RESREAP_SOCKET_TABLE", "netlink", "auto, sock_diag, procfs"),
    ("RESREAP_BPF_LOADER", "llvm", "auto, core, bcc"),
    ("RESREAP_LOCK", "watch.lock", "absolute"),
])
def test_a_bad_knob_is_one_line_naming_it(name, value, says):
    with pytest.raises(UsageError) as err:
        tunables.read({name: value})
    text = str(err.value)
    assert name in text and says in text and "\n" not in text


def test_the_cli_says_a_bad_knob_in_one_line(tmp_path):
    """Through the real command: exit 2 and one line, before anything opens
    (this runs unprivileged: no root is needed to be told)."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "resreap", "trace"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path,
                         env=dict(os.environ, RESREAP_RINGBUF_PAGES="3",
                                  PYTHONPATH=os.path.dirname(os.path.dirname(tunables.__file__))))
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "RESREAP_RINGBUF_PAGES" in run.stderr
