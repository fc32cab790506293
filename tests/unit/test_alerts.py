"""The shipped alert rules (packaging/prometheus/), under promtool: they
parse, their unit tests pass, and those tests have teeth (a rule changed
makes them fail).  Live, against a real watch: tests/kernel/test_alerts_live.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"


@pytest.fixture
def promtool():
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is missing (Debian's prometheus; scripts/setup --test installs it)")
    return tool


def test_the_rules_parse_and_their_tests_pass(promtool):
    check = subprocess.run([promtool, "check", "rules", "resreap-alerts.yml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "7 rules found" in check.stdout, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", "resreap-alerts.test.yml"], cwd=RULES,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_rule_tests_fail_when_a_rule_changes(promtool, tmp_path):
    for name in ("resreap-alerts.yml", "resreap-alerts.test.yml"):
        shutil.copy(RULES / name, tmp_path / name)
    rules = tmp_path / "resreap-alerts.yml"
    original = rules.read_text()
    for old, new, alert in (("[10m])) > 3", "[10m])) > 30", "ResreapReapStorm"),
                            ("(resreap_fd_exhaustion_seconds) < 1800",
                             "(resreap_fd_exhaustion_seconds) < 1000", "ResreapFdExhaustionSoon")):
        assert old in original
        rules.write_text(original.replace(old, new))
        run = subprocess.run([promtool, "test", "rules", "resreap-alerts.test.yml"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and alert in run.stdout + run.stderr
