"""The settings in force, shared: Watcher, Counting, Eligibility,
StormGuard and Killer all read them through one ``Current``, so a reload
swaps one reference and no component keeps a stale copy."""

from __future__ import annotations

from typing import NamedTuple

from resreap.engine.filters import Filters
from resreap.engine.killer import Plan
from resreap.engine.policy import Limits


class WatchConfig(NamedTuple):
    limits: Limits
    plan: Plan
    filters: Filters


class Current:
    """The one reference to the WatchConfig in force.  Components read it at
    each decision (never copy a field at construction); a kill sequence
    already running keeps the plan it started with."""

    __slots__ = ("config",)

    def __init__(self, config: WatchConfig) -> None:
        self.config = config

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def plan(self) -> Plan:
        return self.config.plan

    @property
    def filters(self) -> Filters:
        return self.config.filters
