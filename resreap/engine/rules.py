"""Per-service rules: which settings judge a process.  `[[rule]]` entries
of the config file, in order, each a match (cmd, unit, container, port,
user, ANDed) and the watch settings it changes; the first rule that
matches a process (and, with `port`, the leaked socket) applies, else the
default rule: the top-level settings and the flags (or none at all with
``default = "ignore"``).

Who controls each match input (a rule is only as trustworthy as the
inputs it reads):

| key       | read from                              | who can set it |
|-----------|----------------------------------------|----------------|
| cmd       | /proc/PID/cmdline                      | the process itself: anyone, for their own processes |
| unit      | the system manager's unit in the cgroup path | root (systemd); a user's own units stay inside user@UID.service |
| container | the outermost container cgroup         | root (the container runtime, machined) |
| port      | the leaked socket's local port         | whoever may bind it: below 1024 root, in the host's namespace; any user in a namespace of their own |
| user      | every uid of the process (real, effective, saved, fs) | root, or that user |
| namespace | its pod's namespace, from the runtime's record (host/pods) | whoever may create pods in that namespace |
| pod       | its pod's name (glob), ditto           | whoever creates the pod |
| container_name | its container's name in the pod   | whoever creates the pod |
| labels    | its pod's labels (CRI-O's records; containerd keeps none on disk) | whoever creates the pod |

So `unit`, `container`, `user` and `namespace` select what a user cannot
enter (a namespace: no one outside it); `cmd`, `port`, `pod`,
`container_name` and `labels` only narrow them.  A rule that matches on
those alone can be entered by any user's process, or any tenant's pod
(`resreap rules` says so)."""

from __future__ import annotations

import re
import signal
from typing import NamedTuple

from resreap.engine.evidence import Rules
from resreap.engine.filters import CommandPattern, container_matches, pod_matches, \
    unit_matches
from resreap.errors import UsageError
from resreap.host.supervisor import Supervisor

# -- a rule's settings: when its sockets count and how often it may be
# reaped (Limits), and what is done to a process (Plan) ------------------


class Limits(NamedTuple):
    limit: int = 2          # -l: counting sockets that make a process a target
    grace: float = 2.0      # -i: seconds before an eof-ignored socket counts
    max_kills: int = 3      # storm bound: kills of one command line ...
    per: float = 60.0       # ... per this many seconds
    stall: float = 60.0     # --stall: seconds before an unread or queued one counts
    fd_percent: float | None = None  # --fd-percent: also needed, % of RLIMIT_NOFILE
    # --act-before: also a target, with one counting socket, once its fds
    # are forecast to run out within this many seconds (engine/forecast).
    act_before: float | None = None

    @property
    def rules(self) -> Rules:
        return Rules(self.grace, self.stall)


def parse_rate(text: str) -> tuple[int, float]:
    """N/SECONDS, e.g. 3/60."""
    n, sep, per = text.partition("/")
    try:
        count, seconds = int(n), float(per)
    except ValueError:
        count, seconds = 0, 0.0
    if not sep or count < 1 or seconds <= 0:
        raise UsageError(f"bad --max-rate {text!r}: expected N/SECONDS with N >= 1, e.g. 3/60")
    return count, seconds


def parse_signal(text: str) -> signal.Signals:
    """TERM, SIGTERM, term or 15."""
    raw = text.strip().upper()
    try:
        if raw.isdigit():
            return signal.Signals(int(raw))
        return signal.Signals[raw if raw.startswith("SIG") else "SIG" + raw]
    except (KeyError, ValueError):
        raise UsageError(f"unknown signal {text!r} (examples: TERM, QUIT, 9)") from None


class Plan(NamedTuple):
    """What to do to a process, from the command line."""

    signal: signal.Signals = signal.SIGTERM
    first_signal: signal.Signals | None = None
    wait: float = 2.0
    hook: str | None = None
    hook_timeout: float = 10.0
    dry_run: bool = False
    # After a kill, start the process's systemd service if it stayed down.
    restart_units: bool = True
    # Units started again even though their Restart= would not (--restart-unit).
    restart_also: frozenset = frozenset()
    # Whom the signals go to: the process ("process"), or, in a pod, its
    # container's main process ("container": the runtime and the kubelet
    # then restart the whole container; engine/containers).
    kill: str = "process"

    def describe(self) -> str:
        """The sequence in one line, e.g. 'hook > SIGQUIT > SIGTERM > wait 2s > SIGKILL'."""
        steps = ["hook"] if self.hook else []
        if self.first_signal:
            steps.append(self.first_signal.name)
        steps += [self.signal.name, f"wait {self.wait:g}s", "SIGKILL"]
        return " > ".join(steps) + (" to its container's main process"
                                    if self.kill == "container" else "")


KILLS = ("process", "container")



DEFAULT = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Keys that a user cannot make their own process match (a namespace: no
# tenant of another namespace).
TRUSTED_KEYS = ("unit", "container", "user", "namespace")


class Facts(NamedTuple):
    """What a process's rule is matched against (read once per process)."""

    cmdline: str
    where: Supervisor
    uids: frozenset[int]  # real, effective, saved, filesystem


NO_FACTS = Facts("", Supervisor(), frozenset())


class Match(NamedTuple):
    """A rule's match: every key given must hold (None: any)."""

    cmd: CommandPattern | None = None
    unit: str | None = None
    container: str | None = None
    port: int | None = None
    uid: int | None = None
    user: str | None = None  # as written (a name or a number), for output
    namespace: str | None = None  # its pod's namespace (glob)
    pod: str | None = None        # its pod's name (glob)
    container_name: str | None = None  # its container's name in the pod
    # Its pod's labels must include these (sorted pairs); a pod whose
    # labels are unknown (containerd) never matches.
    labels: tuple[tuple[str, str], ...] | None = None

    def wants(self, facts: Facts, lport: int) -> bool:
        if self.port is not None and lport != self.port:
            return False
        if self.uid is not None and facts.uids != {self.uid}:
            return False  # a setuid program run by another user is not theirs
        if self.unit is not None and not unit_matches(self.unit, facts.where):
            return False
        if self.container is not None and not container_matches(self.container, facts.where):
            return False
        if self.in_pods and not self._pod_wants(facts.where):
            return False
        return self.cmd is None or self.cmd.search(facts.cmdline)

    def _pod_wants(self, where: Supervisor) -> bool:
        if not pod_matches(self.namespace, self.pod, where):
            return False
        pod = where.pod
        if self.container_name is not None and pod.container != self.container_name:
            return False
        if self.labels is not None:
            have = dict(pod.labels) if pod.labels is not None else None
            return have is not None and all(have.get(k) == v for k, v in self.labels)
        return True

    @property
    def in_pods(self) -> bool:
        """Does it select by Kubernetes identity?"""
        return any(v is not None for v in (self.namespace, self.pod, self.container_name,
                                            self.labels))

    @property
    def needs_facts(self) -> bool:
        return self.in_pods or any(v is not None for v in (self.cmd, self.unit, self.container,
                                                           self.uid))

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.cmd is not None:
            out["cmd"] = self.cmd.text
        for key in ("unit", "container", "port", "user", "namespace", "pod", "container_name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.labels is not None:
            out["labels"] = dict(self.labels)
        return out

    @property
    def trusted(self) -> bool:
        """Does it select by an input a user cannot enter (unit,
        container, user, namespace)?  Otherwise any user's process (or any
        tenant's pod) can match it."""
        return any(getattr(self, key) is not None for key in TRUSTED_KEYS)


class Rule(NamedTuple):
    name: str
    match: Match
    limits: Limits
    plan: Plan


class RuleSet(NamedTuple):
    """The rules in force, in order, then the default rule (None:
    ``default = "ignore"``, unmatched processes are left alone)."""

    rules: tuple[Rule, ...] = ()
    default: Rule | None = None

    def pick(self, facts: Facts, lport: int) -> Rule | None:
        """The first rule matching (``facts``: NO_FACTS where no rule
        ``needs_facts``)."""
        for rule in self.rules:
            if rule.match.wants(facts, lport):
                return rule
        return self.default

    @property
    def needs_facts(self) -> bool:
        return any(r.match.needs_facts for r in self.rules)

    @property
    def by_port(self) -> bool:
        """Does any rule match on the socket's port?"""
        return any(r.match.port is not None for r in self.rules)

    @property
    def plain(self) -> bool:
        """Only the default rule: every process is judged by it."""
        return not self.rules and self.default is not None

    def every(self) -> tuple[Rule, ...]:
        return self.rules + ((self.default,) if self.default is not None else ())

    @property
    def earliest(self) -> float:
        """The shortest grace of any rule: no socket counts sooner."""
        return min((r.limits.grace for r in self.every()), default=2.0)

    @property
    def loosest(self) -> Rules:
        """The shortest grace and stall of any rule: a socket that does not
        count under these counts under none."""
        every = self.every()
        if not every:
            return Rules()
        return Rules(min(r.limits.grace for r in every), min(r.limits.stall for r in every))

    @property
    def act_before(self) -> float | None:
        """The longest --act-before of any rule (None: no rule acts on a
        forecast, and none is computed for decisions)."""
        return max((r.limits.act_before for r in self.every()
                    if r.limits.act_before is not None), default=None)

    @property
    def longest_window(self) -> float:
        """The longest --max-rate window: how long kills are remembered."""
        return max((r.limits.per for r in self.every()), default=60.0)

    def named(self, name: str) -> Rule | None:
        return next((r for r in self.every() if r.name == name), None)
