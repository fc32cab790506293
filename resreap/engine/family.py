"""Children first: reap the least.  A process whose counting sockets its
own descendants hold too, and who are over their limit themselves (a
prefork master and its workers share the listener and its accept queue),
waits while they are handled; it is judged again once their kill
sequences end, and reaped only if the leak remains.  Killing both would
take the listener away: the service would be down."""

from __future__ import annotations

from typing import Callable, Container

from resreap.bounded import BoundedDict
from resreap.engine.counting import Counting
from resreap.engine.rules import Rule
from resreap.host.procinfo import Lineage
from resreap.model import Owner

# Times a parent waits for its children before it is judged as it stands:
# a descendant that is never handled (rate-limited, unreadable) must not
# shelter its parent forever.
CHILDREN_FIRST_WAITS = 2
PARENTS_REMEMBERED = 4096


class ChildrenFirst:
    def __init__(self, sockets: Counting, lineage: Lineage) -> None:
        self.sockets = sockets
        self.lineage = lineage
        # Parents waiting for their children's kill sequences, and how
        # many times each has waited.
        self._parents: BoundedDict[Owner, set[int]] = BoundedDict(PARENTS_REMEMBERED)
        self._waits: BoundedDict[Owner, int] = BoundedDict(PARENTS_REMEMBERED)

    def kids(self, owner: Owner, spared: Container[tuple[int, int]]) -> list[int]:
        """``owner``'s descendants that hold its counting sockets and are
        over their own limit (the spared excepted)."""
        mine = self.sockets.counter.by_owner.get(owner)
        if not mine:
            return []
        # The co-holders, from the owner's own sockets (each knows whom it
        # counts against): never a walk over every owner, which made each
        # decision cost the number of owners (a user's 10,000 processes
        # stalled the loop for a minute).
        others: set[Owner] = set()
        for key in mine:
            entry = self.sockets.table.get(key)
            if entry is not None:
                others.update(entry.against)
        others.discard(owner)
        # Ancestry from the turn's lineage: each parent read once, each walk
        # bounded (procinfo.ANCESTRY_DEPTH: past it "not a descendant", and
        # the owner, itself over its limit, is judged).
        return [other.pid for other in sorted(others)
                if other.ident not in spared and other.pid != owner.pid
                and self.lineage.descends(other.pid, owner.pid)
                and self.sockets.over(other) is not None]

    def wait(self, owner: Owner, kids: list[int], rule: Rule) -> float | None:
        """Seconds ``owner`` waits for ``kids`` (their hooks, signals and
        waits, and their sockets' grace), or None: it has waited enough."""
        waits = self._waits.get(owner, 0)
        if waits >= CHILDREN_FIRST_WAITS:
            return None
        self._waits[owner] = waits + 1
        self._parents[owner] = set(kids)
        plan = rule.plan
        return plan.hook_timeout * bool(plan.hook) + 2 * plan.wait + rule.limits.grace + 5.0

    def done(self, pid: int) -> list[Owner]:
        """A kill sequence of ``pid`` ended: the parents none of whose
        children is still being handled (to be judged again at once)."""
        free = []
        for parent, kids in self._parents.items():
            kids.discard(pid)
            if not kids:
                free.append(parent)
        for parent in free:
            self._parents.discard(parent)
        return free

    def keep(self, holding: Callable[[Owner], bool]) -> None:
        """Forget the parents that hold no counting socket any more."""
        for book in (self._waits, self._parents):
            book.keep(holding)
