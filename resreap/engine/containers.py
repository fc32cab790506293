"""Whom a container-level kill (a rule's ``kill = "container"``) signals:
the main process of the leaking process's container, as its runtime
recorded it, so that the runtime and the kubelet restart the container.

Never the pod's sandbox (pause) process, never another container's
process: the recorded main process must sit in the very container cgroup
the leaking process sits in (the same container id under the same pod
UID, both from cgroup paths root made).  Anything less certain falls back
to the process itself, with the reason said on the reap line."""

from __future__ import annotations

from typing import NamedTuple

from resreap.errors import ResreapError
from resreap.host import pods, supervisor
from resreap.host.procinfo import Proc, ProcInfo
from resreap.host.supervisor import Supervisor


class Choice(NamedTuple):
    """Whom the signals go to: ``main`` (None: the process itself) and why."""

    main: ProcInfo | None
    why: str


def main_process(where: Supervisor, holder: ProcInfo, proc: Proc) -> Choice:
    """The main process of ``holder``'s container (``where``: its
    supervisor, read for the decision)."""
    pod = where.pod
    if where.ref is None or pod is None:
        return Choice(None, "not in a pod's container: the process itself is signalled")
    if pod.sandbox:
        return Choice(None, "the pod's sandbox: the process itself is signalled")
    records = pods.records(proc.root)
    pid = records.main_pid(pod) if records is not None else None
    if pid is None:
        return Choice(None, "its runtime recorded no main process: the process itself "
                            "is signalled")
    if pid == holder.pid:
        return Choice(holder, "it is its container's main process")
    try:
        # Its stat only: a tenant's process, whose command line a read
        # could hang on (the mmap lock); pid, start and comm pin it.
        start, ppid, comm, kthread = proc.read_stat(pid)
        main_where = supervisor.read(pid, proc)
    except ResreapError:
        return Choice(None, f"its container's main process {pid} cannot be read: the "
                            "process itself is signalled")
    if main_where.ref != where.ref:
        # A stale record whose pid now names someone else.
        return Choice(None, f"pid {pid}, recorded as its container's main process, is not "
                            "in its container: the process itself is signalled")
    main = ProcInfo(pid, start, ppid, comm, "", kthread)
    return Choice(main, f"its container's main process, pid {pid} ({comm})")
