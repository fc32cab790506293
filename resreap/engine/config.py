"""The settings in force, shared: Watcher, Counting, Eligibility,
StormGuard and Killer all read them through one ``Current``, so a reload
swaps one reference and no component keeps a stale copy."""

from __future__ import annotations

from typing import NamedTuple

from resreap.engine.filters import Filters
from resreap.engine.rules import DEFAULT, Limits, Match, Plan, Rule, RuleSet


def read_latency(grace: float) -> float:
    """How long the loop may sleep without new events: a quarter of the
    grace, within [0.01, 0.25] s.  Deadlines use the kernel's timestamps, so
    this bounds how late a new socket is seen (and, with the kernel's first
    pass, how often the pending sockets are taken), not timer accuracy."""
    return min(0.25, max(0.01, grace / 4))


class WatchConfig(NamedTuple):
    limits: Limits
    plan: Plan
    filters: Filters
    # The config file's [[rule]]s, in order; the default rule is the
    # settings above (the top level and the flags).
    rules: tuple[Rule, ...] = ()
    # default = "ignore": processes no rule matches are left alone.
    ignore_unmatched: bool = False

    def ruleset(self) -> RuleSet:
        default = None if self.ignore_unmatched else Rule(DEFAULT, Match(), self.limits, self.plan)
        return RuleSet(self.rules, default)

    def dry_run(self) -> "WatchConfig":
        """The same settings, every rule a dry run (top, rules, and
        --dry-run on the command line over a config's rules)."""
        return self._replace(plan=self.plan._replace(dry_run=True),
                             rules=tuple(r._replace(plan=r.plan._replace(dry_run=True))
                                         for r in self.rules))

    @property
    def acts(self) -> bool:
        """Would any rule signal (not every one a dry run)?"""
        return any(not rule.plan.dry_run for rule in self.ruleset().every())


class Current:
    """The one reference to the WatchConfig in force.  Components read it at
    each decision (never copy a field at construction); a kill sequence
    already running keeps the plan it started with."""

    __slots__ = ("_config", "_rules")

    def __init__(self, config: WatchConfig) -> None:
        self.config = config

    @property
    def config(self) -> WatchConfig:
        return self._config

    @config.setter
    def config(self, config: WatchConfig) -> None:
        self._config, self._rules = config, config.ruleset()

    @property
    def rules(self) -> RuleSet:
        return self._rules

    @property
    def limits(self) -> Limits:
        return self._config.limits

    @property
    def plan(self) -> Plan:
        return self._config.plan

    @property
    def filters(self) -> Filters:
        return self._config.filters
