"""The article's command lines work as written after `watch`."""

import pytest

from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


@pytest.mark.parametrize("args,field,value", [
    (["-l", "2", "-f", "^java"], "filter", "^java"),
    (["-F", "127.0.0.1:2049"], "ignore", ["127.0.0.1:2049"]),
])
def test_article_examples(resreap_bin, args, field, value):
    run = WatchRun(resreap_bin, *args, "-d")
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start[field] == value and start["limit"] == 2 and start["dry_run"] is True
    finally:
        assert run.stop() == 0
    assert run.wait_for(lambda e: e["event"] == Event.STOP)["lost_events"] == 0
