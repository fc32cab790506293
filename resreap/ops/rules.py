"""`resreap rules`: the rules in force, and who falls under which, before
they act.  Each rule with its match, the inputs it trusts, and its
settings; then every process holding CLOSE_WAIT sockets now, the rule it
falls under, its counting sockets, what its rule would do and when.  The
same first look as `top --once` (the watch's own source and policy, as a
dry run)."""

from __future__ import annotations

import json
import time
from typing import Callable

from resreap.engine.rules import TRUSTED_KEYS, Rule
from resreap.engine.view import Row
from resreap.ops import top
from resreap.ops.escaping import safe
from resreap.ops.settings import WatchSettings


def describe(rule: Rule, default: bool = False) -> dict:
    """One rule, as `rules` prints it."""
    limits, plan = rule.limits, rule.plan
    match = rule.match.describe()
    return {
        "rule": rule.name,
        "match": match if not default else (
            "every process no rule matches (the top level and the flags, narrowed by -f, -p, "
            "--unit, --container, --namespace, --pod)"),
        "trusts": [k for k in TRUSTED_KEYS if k in match] if not default else [],
        "any_user_can_match": not default and not rule.match.trusted,
        "limit": limits.limit, "grace": limits.grace, "stall": limits.stall,
        "fd_percent": limits.fd_percent, "act_before": limits.act_before, "max_rate": f"{limits.max_kills}/{limits.per:g}",
        "plan": plan.describe(), "dry_run": plan.dry_run, "hook": plan.hook,
        "restart_units": plan.restart_units, "kill": plan.kill,
    }


def book(st: WatchSettings) -> list[dict]:
    rules = st.engine.ruleset()
    out = [describe(r) for r in rules.rules]
    if rules.default is not None:
        out.append(describe(rules.default, default=True))
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}s"


def _when(row: Row) -> str:
    if row.rule == "-":
        return "left alone: no rule matches (default = \"ignore\")"
    if row.reap_in is None:
        return "nothing with these sockets (not enough of them would count)"
    doing = "would be logged (dry run)" if row.action == "dry run" else row.action
    when = "now" if row.reap_in == 0 else f"in {row.reap_in:.0f}s"
    return f"{when}: {doing}"


def text(rules: list[dict], rows: list[Row]) -> list[str]:
    lines = []
    for r in rules:
        # The match is root's config; escaped all the same (one escaping).
        match = safe(r["match"] if isinstance(r["match"], str) else " ".join(
            f"{k}={v}" for k, v in r["match"].items()))
        trust = "; ANY USER'S PROCESS CAN MATCH IT (cmd/port/pod names only)" \
            if r["any_user_can_match"] else (f"; trusts {','.join(r['trusts'])}"
                                             if r["trusts"] else "")
        if "namespace" in r["trusts"]:
            trust += " (any pod of that namespace can match it)"
        if isinstance(r["match"], dict) and "labels" in r["match"]:
            trust += "; labels are known from CRI-O's records only (never a containerd pod)"
        lines.append(f"rule {safe(r['rule'])}: {match}{trust}")
        lines.append(f"  limit {r['limit']}, grace {r['grace']:g}s, stall {r['stall']:g}s, "
                     f"fd_percent {r['fd_percent'] or '-'}, "
                     f"act_before {_seconds(r['act_before'])}, max_rate {r['max_rate']}, "
                     f"{'dry run' if r['dry_run'] else 'plan ' + r['plan']}"
                     + (", hook" if r["hook"] else ""))
    lines.append("")
    if not rows:
        lines.append("no process holds a socket in CLOSE_WAIT now")
    for row in rows:
        # A process's name and its cgroup's are anyone's: escaped, as top does
        # (raw, an OSC title and a newline with a forged line reached root's
        # terminal).
        where = row.place or "-"
        out = "" if row.exhausted_in is None else \
            f", out of fds in {row.exhausted_in:.0f}s ({row.fds}/{row.fd_limit})"
        lines.append(f"pid {row.pid} {safe(row.comm)} ({safe(where)}): rule {safe(row.rule)}, "
                     f"CLOSE_WAIT {row.close_wait}, counting {row.counting}{out}; {_when(row)}")
    return lines


def run(st: WatchSettings, json_out: bool, out: Callable[[str], None]) -> None:
    rules = book(st)
    watcher = top.start(st, churn=False)
    try:
        top.first_look(watcher)
        data = top.frame(watcher, time.monotonic(), 0.0, "reap-in", top.actions(st))
    finally:
        watcher.source.close()
    if json_out:
        out(json.dumps({"rules": rules, "holders": [
            {**r._asdict(), "would": _when(r)} for r in data["rows"]]}, default=str))
        return
    for line in text(rules, data["rows"]):
        out(line)
