"""Who restarts a process: its systemd unit or its container, from its
cgroup (facts only; bringing a service back is engine/revival's).

Every process is in a cgroup whose path names its systemd unit
(``/system.slice/nginx.service``) or its container (``docker-<id>.scope``,
``/kubepods/.../<id>``, ``machine-<name>.scope``); resreap shows both in its
decision lines.

Who controls the cgroup path: a process can only move into cgroups it may
write, which for a user means its own delegated subtree under user.slice.
The system manager's unit is the first component below the slices: only
root (systemd) creates cgroups at that level, so a user cannot make resreap
start a system unit by naming a cgroup after it.  Deeper components (a user
unit, a container id) are labels: shown, escaped, never acted on.

Kubernetes' pods are named by two components the kubelet and the runtime
make: ``pod<UID>`` (cgroupfs) or ``kubepods-<qos>-pod<UID>.slice`` (systemd
driver), with the container's cgroup right below it.  The names those stand
for are in the runtime's records (host/pods), read once per container.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from resreap.errors import AccessDenied, ProcessGone, ResreapError
from resreap.host import pods
from resreap.host.pods import Pod, Ref
from resreap.host.procinfo import HOST, Proc

# /proc/PID/cgroup is a few short lines; a path is at most PATH_MAX.
CGROUP_MAX = 8192

_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,255}\.(service|scope)$")
_CONTAINER = [
    # docker, containerd (Kubernetes' systemd driver), CRI-O, podman
    re.compile(r"^(?:docker|cri-containerd|crio|libpod|containerd)-([0-9a-f]{64})\.scope$"),
    # cgroupfs drivers: /docker/<id>, /kubepods/burstable/pod<uid>/<id>,
    # CRI-O's /kubepods/burstable/pod<uid>/crio-<id>
    re.compile(r"^(?:crio-)?([0-9a-f]{64})$"),
]
# The pod's cgroup, right above its containers': cgroupfs, then the systemd
# driver (the UID's dashes escaped as underscores).
_POD = [
    re.compile(r"^pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"),
    re.compile(r"^kubepods(?:-besteffort|-burstable)?-pod"
               r"([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice$"),
]
_MACHINE = re.compile(r"^machine-(.{1,200})\.scope$")  # systemd-nspawn, libvirt
_MACHINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_USER_MANAGER = re.compile(r"^user@[0-9]+\.service$")


class Supervisor(NamedTuple):
    """Where a process lives, as its cgroup path says."""

    cgroup: str = ""
    unit: str | None = None       # the system manager's unit (nginx.service)
    container: str | None = None  # 12 hex digits of a container id, or a machine name
    ref: Ref | None = None        # a pod's container, as the cgroup path names it
    pod: Pod | None = None        # who that is, from the runtime's records (host/pods)

    def fields(self) -> dict[str, str]:
        """For decision lines: only what is known.  In a pod, ``container``
        is the container's name in the pod and ``container_id`` its id."""
        out = {}
        if self.unit:
            out["unit"] = self.unit
        if self.pod is not None:
            out["namespace"] = self.pod.namespace
            out["pod"] = self.pod.name
            if self.pod.container:
                out["container"] = self.pod.container
        if self.ref is not None:
            out["pod_uid"] = self.ref.pod_uid
        if self.container:
            out["container_id" if self.ref is not None else "container"] = self.container
        return out

    @property
    def restarts_as(self) -> tuple[str, str]:
        """(unit, container) as they stay across a restart by its
        supervisor: what the storm bound counts kills against.  In a pod,
        the kubelet restarts a container under a new id (and, with the
        systemd driver, a new scope): the pod and the container's name stay."""
        if self.pod is not None:
            return "", f"{self.pod.namespace}/{self.pod.name}/{self.pod.container}"
        if self.ref is not None:
            return "", f"pod {self.ref.pod_uid}"
        return self.unit or "", self.container or ""

    @property
    def container_name(self) -> str:
        """The container as named in one word: its name in its pod, else a
        machine name or 12 hex digits of its id ("" if none)."""
        if self.pod is not None and self.pod.container:
            return self.pod.container
        return self.container or ""

    @property
    def shown(self) -> str:
        """In one column: namespace/pod, else the container, else the
        unit ("" if none)."""
        if self.pod is not None:
            return self.pod.shown
        return self.container or self.unit or ""

    @property
    def unit_cgroup(self) -> str | None:
        """The unit's own cgroup (the slices and the unit), to compare with
        what systemd says the unit's ControlGroup is."""
        if not self.unit:
            return None
        parts = _parts(self.cgroup)
        return "/" + "/".join(parts[:parts.index(self.unit) + 1])


def _parts(path: str) -> list[str]:
    # Read from inside another cgroup namespace (a container with hostPID),
    # paths outside ours start with "/..": what follows is still the path.
    return [p for p in path.split("/") if p and p != ".."]


def _unescape(name: str) -> str:
    # systemd escapes "-" inside names as \x2d (machine-my\x2dbox.scope)
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), name)


def parse(text: str, named: bool = True) -> Supervisor:
    """The supervisor named by the contents of /proc/PID/cgroup: the v1
    name=systemd line, or the unified (v2) one.  ``named``: this host's
    systemd keeps a name=systemd hierarchy (hybrid or legacy).  On a
    unified host such a line is a hierarchy someone else mounted (a
    container's old systemd mounts its own, and writes it): never read."""
    unified = named_path = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, where = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            unified = where
        elif controllers == "name=systemd" and named:
            named_path = where
    # Hybrid hosts have both; systemd places units in each, and the v1
    # name=systemd one is the one it always keeps.
    path = named_path if named_path is not None else unified
    if path is None:
        return Supervisor()
    parts = _parts(path)
    unit = None
    for part in parts:
        if part.endswith(".slice"):
            continue
        if _UNIT.match(part):
            unit = part
        break
    container = ref = None
    for i, part in enumerate(parts):
        if _USER_MANAGER.match(part):
            # Below a user's manager every name is the user's to choose (a
            # rootless container, or a cgroup named like one): no container
            # id is taken from there.
            break
        ids = [m.group(1) for pattern in _CONTAINER if (m := pattern.match(part))]
        found = [i[:12] for i in ids]
        if m := _MACHINE.match(part):
            name = _unescape(m.group(1))
            # Unescaped, \xNN may be anything: a control character or a
            # shell metacharacter for a hook.  Only a plain machine name.
            found = [name] if _MACHINE_NAME.match(name) else [""]
        if found:
            # The outermost container is the one the host's runtime made;
            # below it, cgroups are the container's own to name (a runtime
            # or systemd inside it, with delegation): one named like another
            # container must not make its processes that container's.
            container = found[0] or None
            # A pod's container: its cgroup right below the pod's.
            uid = [m.group(1) for pattern in _POD if i and (m := pattern.match(parts[i - 1]))]
            if ids and uid:
                ref = Ref(ids[0], uid[0].replace("_", "-"))
            break
    return Supervisor(path, unit, container, ref)


_HOST_NAMED: dict[str, bool] = {}


def host_keeps_named(proc: Proc = HOST) -> bool:
    """Does this host's systemd keep a name=systemd hierarchy?  Read once,
    from our own cgroup file (init's may be hidden)."""
    known = _HOST_NAMED.get(proc.root)
    if known is None:
        try:
            known = b":name=systemd:" in proc.cgroup("self", CGROUP_MAX)
        except (ResreapError, OSError):  # unknown: read as the unified default
            known = False
        _HOST_NAMED[proc.root] = known
    return known


def read(pid: int, proc: Proc = HOST) -> Supervisor:
    """``pid``'s supervisor; raises ProcessGone or AccessDenied."""
    raw = proc.cgroup(pid, CGROUP_MAX)
    where = parse(raw.decode("utf-8", "backslashreplace"), host_keeps_named(proc))
    if where.ref is not None and (records := pods.records(proc.root)) is not None:
        where = where._replace(pod=records.pod(where.ref))
    return where


def of(pid: int, proc: Proc = HOST) -> Supervisor:
    """``pid``'s supervisor, or an empty one when the process is gone or
    unreadable: for labels, where nothing is known is simply not shown."""
    try:
        return read(pid, proc)
    except (ProcessGone, AccessDenied):
        return Supervisor()
