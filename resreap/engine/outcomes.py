"""What follows a kill sequence's end.  The watch settles each outcome
(the storm bound's record, the sockets it left, when to look again) and
pushes it, with the fields settling added, to its listeners: the outcome
line (say), the tally the metrics export (Tally), and, in the daemon, the
recent reaps that `top` shows (ops/recent)."""

from __future__ import annotations

import bisect
import logging
from typing import Callable, Iterable

from resreap.engine.decisions import Event, decision, endpoints
from resreap.engine.killer import Outcome, Target
from resreap.engine.policy import Threshold
from resreap.model import KILL_BUCKETS, Evidence, Result, Revival

# A listener: the outcome, and the fields the watch's settling added.
Listener = Callable[[Outcome, dict], None]

# Revivals that are what was meant (or all that could be done): the others
# make the outcome line an error.
FINE = (Revival.BY_SYSTEMD, Revival.STARTED, Revival.RUNNING, Revival.STOPPED,
        Revival.WAS_DOWN, Revival.NOT_MAIN, Revival.NOT_RESTARTABLE)
# (rule, result, namespace, container) counted: rules are few, and a pod's
# container names are its tenant's to choose (past the bound, outcomes
# still count in results and the log).
RULE_OUTCOMES_MAX = 1024


def announce(target: Target, bound: Threshold) -> None:
    """The `reap` (or `would-reap`) line, as the process is handed to the
    kill engine: who, under which rule, why (its counting sockets, their
    evidence, the bound they cross, or its fds' forecast: ``reason``), when
    its fds run out at this pace, what will be done."""
    info, rule, where = target.info, target.rule, target.where
    plan = rule.plan
    decision(Event.REAP if not plan.dry_run else Event.WOULD_REAP, logging.WARNING,
             pid=info.pid, comm=info.comm, **where.fields(), rule=rule.name,
             count=len(target.sockets), limit=rule.limits.limit, reason=target.reason,
             **({"needed": bound.count} if bound.why == "fd-percent" else {}),
             **({"exhausted_in": round(target.exhausted_in)}
                if target.exhausted_in is not None else {}),
             evidence=target.evidence, oldest=round(target.oldest, 3),
             sockets=endpoints(target.sockets),
             cmd=info.cmdline, plan=plan.describe() + (" (dry run)" if plan.dry_run else ""),
             **_kill_fields(target))


def _kill_fields(target: Target) -> dict:
    """Under kill = "container": whom the signals go to, and why (or why
    they go to the process after all)."""
    if not target.kill_why:
        return {}
    main = target.signalled
    return {"kill": "container" if main is not None else "process",
            **({"signalled": main.pid, "signalled_comm": main.comm} if main is not None else {}),
            "kill_detail": target.kill_why}


def say(outcome: Outcome, added: dict) -> None:
    """The `outcome` line: who, what was done, how long it took, whether its
    service came back; then what the watch added (sockets left, again_in)."""
    info, target, result = outcome.target.info, outcome.target, outcome.result
    level = logging.ERROR if result is Result.FAILED else logging.WARNING
    fields = dict(pid=info.pid, comm=info.comm, **(target.where.fields() if target.where else {}),
                  rule=target.rule_name, result=result.value, signals=outcome.signals,
                  took=round(outcome.took, 3))
    if outcome.revive is not None:
        revival, said = outcome.revive
        fields["revive"], fields["revive_detail"] = revival.value, said
        if revival not in FINE:
            level = logging.ERROR
    if outcome.hook_status is not None:
        fields["hook"] = outcome.hook_status
    if outcome.detail:
        fields["detail"] = outcome.detail
    main = target.signalled
    if main is not None:
        fields["signalled"], fields["signalled_comm"] = main.pid, main.comm
        if result.killed_it:
            # A container lives as long as its main process.
            fields["container_exited"] = True
    fields.update(added)
    decision(Event.OUTCOME, level if result is not Result.DRY_RUN else logging.INFO, **fields)


class Tally:
    """The watch's running counts, for metrics and the stop line: outcomes
    by result and by rule, kill durations, the evidence of reaped sockets,
    revivals, hook vetoes."""

    def __init__(self) -> None:
        self.results: dict[Result, int] = {}
        # (rule, result, pod's namespace, container name) -> outcomes
        self.rule_results: dict[tuple[str, str, str, str], int] = {}
        # Kill durations for the histogram: per bucket, and their sum.
        self.kill_buckets = [0] * (len(KILL_BUCKETS) + 1)
        self.kill_seconds = 0.0
        self.reaped_evidence: dict[str, int] = {}
        self.revivals: dict[Revival, int] = {}
        self.hook_failures = 0

    def handed(self, kinds: Iterable[Evidence]) -> None:
        """A process was handed to the killer for sockets of these kinds."""
        for kind in kinds:
            self.reaped_evidence[kind.value] = self.reaped_evidence.get(kind.value, 0) + 1

    def heard(self, outcome: Outcome, _added: dict) -> None:
        result = outcome.result
        self.results[result] = self.results.get(result, 0) + 1
        pod = outcome.target.where.pod if outcome.target.where is not None else None
        by = (outcome.target.rule_name, result.value, pod.namespace if pod else "",
              pod.container if pod else "")
        if by in self.rule_results or len(self.rule_results) < RULE_OUTCOMES_MAX:
            self.rule_results[by] = self.rule_results.get(by, 0) + 1
        if result.killed_it:
            self.kill_buckets[bisect.bisect_left(KILL_BUCKETS, outcome.took)] += 1
            self.kill_seconds += outcome.took
        if outcome.revive is not None:
            revival = outcome.revive[0]
            self.revivals[revival] = self.revivals.get(revival, 0) + 1
        if result is Result.SPARED:
            self.hook_failures += 1

    @property
    def reaped(self) -> int:
        """Processes killed (terminated or needing SIGKILL) so far."""
        return sum(n for r, n in self.results.items() if r.killed_it)
