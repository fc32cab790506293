"""Tests run side by side (scripts/test): a watch a test starts may signal
only that test's processes.  tests/watchrun.py refuses any other."""

import pytest

from watchrun import WatchRun, fenced


@pytest.mark.parametrize("args,ok", [
    (["-l", "2"], False),                       # every process on the host
    (["--backend", "bpf", "-i", "1"], False),
    (["-f", "tag123"], True),
    (["--filter", "tag123"], True),
    (["-p", "4242"], True),
    (["-d"], True),                             # never signals
    (["--dry-run", "-l", "1"], True),
])
def test_flags(args, ok):
    assert fenced(args) is ok


@pytest.mark.parametrize("text,ok", [
    ("limit = 2\n", False),
    ("dry_run = false\nlimit = 2\n", False),
    ('filter = "tag123"\n', True),
    ('[watch]\npid = [4242]\n', True),
    ("[watch]\ndry_run = true\n", True),
])
def test_config_files(tmp_path, text, ok):
    conf = tmp_path / "resreap.toml"
    conf.write_text(text)
    assert fenced(["--config", str(conf)]) is ok


def test_an_unfenced_watch_is_never_started():
    with pytest.raises(ValueError, match="another test's processes"):
        WatchRun("/nonexistent/resreap", "-l", "1")
