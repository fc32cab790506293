"""Who a process in a Kubernetes pod is: namespace, pod, pod UID and
container name, from the node's container runtime (facts only: the
cgroup path that names the pod and container is host/supervisor's).

The cgroup path says which pod (its UID) and which container (its id):
the kubelet and the runtime make those cgroups, as root.  The names are in
the runtime's own record of the container, which only root writes:

- containerd (its CRI plugin) writes each container's OCI bundle under its
  state directory, ``<state>/io.containerd.runtime.v2.task/k8s.io/<id>/``:
  ``config.json`` carries the annotations ``io.kubernetes.cri.sandbox-name``,
  ``-namespace``, ``-uid`` and ``io.kubernetes.cri.container-name``, and
  ``init.pid`` the container's main process.  The pod's labels are not
  there: containerd keeps them in its database, behind its CRI socket.
- CRI-O writes ``<runroot>/overlay-containers/<id>/userdata/config.json``,
  whose annotation ``io.kubernetes.cri-o.Labels`` holds the kubelet's labels
  (pod name, namespace, UID, container name; the sandbox's record adds the
  pod's own labels), and ``pidfile`` the main process.

Never read: anything inside the container (its hostname, environment,
files, the names of cgroups it may create below its own).  Its tenant
writes those, and could name another pod there.  A record must be root's
and not writable by others, and the pod UID in it must be the one the
cgroup path names, or it is not believed.

Cost: one record read per container, kept (bounded) until the container
is gone; a node without Kubernetes never gets here (no cgroup path names
a pod)."""

from __future__ import annotations

import json
import os
import re
import stat
import time
from typing import Callable, NamedTuple, Sequence

from resreap.bounded import BoundedDict

# Where runtimes keep their records on a node: containerd, k3s/RKE2's
# containerd, CRI-O's runroot.  `--runtime-dir` (config `runtime_dir`) replaces the list.
DEFAULT_DIRS = ("/run/containerd", "/run/k3s/containerd", "/run/containers/storage")
_CONTAINERD = "io.containerd.runtime.v2.task/k8s.io/{id}"
_CRIO = "overlay-containers/{id}/userdata"

# Containers whose identity is kept; a record is stat'ed again at most every
# RECHECK seconds (gone: the container went, so does its entry) and a
# container without a record is asked again after as long.
CONTAINERS_REMEMBERED = 2048
RECHECK = 60.0
# A config.json is tens of KiB; anything much larger is not a runtime's.
RECORD_MAX = 4 << 20
LABELS_MAX = 64

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ID = re.compile(r"^[0-9a-f]{64}$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Ref(NamedTuple):
    """A pod's container as its cgroup path names it."""

    container_id: str  # 64 hex digits
    pod_uid: str


class Pod(NamedTuple):
    """A container in a pod, as its runtime recorded it."""

    namespace: str
    name: str
    uid: str
    container: str         # the container's name in the pod spec ("" for the sandbox)
    runtime: str           # "containerd" or "cri-o"
    record: str            # the directory its record was read from
    # The pod's labels, sorted; None: the record does not hold them
    # (containerd), so no rule can select by them.
    labels: tuple[tuple[str, str], ...] | None = None
    sandbox: bool = False  # the pod's pause process, not one of its containers

    @property
    def shown(self) -> str:
        return f"{self.namespace}/{self.name}"

    def label(self, key: str) -> str | None:
        return dict(self.labels or ()).get(key)


class Known(NamedTuple):
    pod: Pod | None
    checked_at: float


class Records:
    """The runtime records under ``dirs``, read once per container."""

    def __init__(self, dirs: Sequence[str] = DEFAULT_DIRS,
                 clock: Callable[[], float] = time.monotonic, owner: int = 0) -> None:
        """``owner``: whose records are believed (root's; a test's tree is
        its user's)."""
        self.dirs = tuple(dirs)
        self._clock = clock
        self.owner = owner
        self._known: BoundedDict[str, Known] = BoundedDict(CONTAINERS_REMEMBERED)
        self._pruned_at = clock()
        self.reads = 0  # records read (for tests and the benchmark)

    def pod(self, ref: Ref) -> Pod | None:
        """The pod and container ``ref`` names (None: no record of it that
        can be believed)."""
        now = self._clock()
        if now - self._pruned_at > RECHECK:
            self._pruned_at = now
            self.forget_gone()
        known = self._known.get(ref.container_id)
        if known is not None and now - known.checked_at <= RECHECK:
            return known.pod
        if known is not None and known.pod is not None and os.path.isdir(known.pod.record):
            self._known[ref.container_id] = known._replace(checked_at=now)
            return known.pod
        pod = self._read(ref)
        self._known[ref.container_id] = Known(pod, now)
        return pod

    def forget_gone(self) -> int:
        """Drop the containers whose record is gone; how many went."""
        return self._known.keep(lambda cid: (k := self._known.peek(cid)) is None
                                or k.pod is None or os.path.isdir(k.pod.record))

    def _read(self, ref: Ref) -> Pod | None:
        for base in self.dirs:
            for runtime, layout in (("containerd", _CONTAINERD), ("cri-o", _CRIO)):
                where = os.path.join(base, layout.format(id=ref.container_id))
                spec = _load(os.path.join(where, "config.json"), self.owner)
                if spec is None:
                    continue
                self.reads += 1
                pod = (_containerd if runtime == "containerd" else self._crio)(spec, where)
                # The record must be the pod's the kubelet made the cgroup
                # for; a mismatch is no identity at all.
                return pod if pod is not None and pod.uid == ref.pod_uid else None
        return None

    def _crio(self, spec: dict, where: str) -> Pod | None:
        notes = _annotations(spec)
        labels = _json_labels(notes.get("io.kubernetes.cri-o.Labels"))
        if labels is None:
            return None
        sandbox = notes.get("io.kubernetes.cri-o.ContainerType") == "sandbox"
        pod_labels = labels if sandbox else None
        sandbox_id = notes.get("io.kubernetes.cri-o.SandboxID", "")
        if pod_labels is None and _ID.match(sandbox_id):
            # The pod's own labels are on its sandbox's record.
            spec = _load(os.path.join(os.path.dirname(os.path.dirname(where)), sandbox_id,
                                      "userdata", "config.json"), self.owner)
            if spec is not None:
                pod_labels = _json_labels(_annotations(spec).get("io.kubernetes.cri-o.Labels"))
        return _pod(labels.get("io.kubernetes.pod.namespace"), labels.get("io.kubernetes.pod.name"),
                    labels.get("io.kubernetes.pod.uid"),
                    "" if sandbox else labels.get("io.kubernetes.container.name"),
                    "cri-o", where, _own_labels(pod_labels), sandbox)

    def main_pid(self, pod: Pod) -> int | None:
        """The container's main process as its runtime recorded it (its
        init: ``runc``'s first process), or None."""
        name = "init.pid" if pod.runtime == "containerd" else "pidfile"
        raw = _read_trusted(os.path.join(pod.record, name), 64, self.owner)
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None


def _containerd(spec: dict, where: str) -> Pod | None:
    notes = _annotations(spec)
    sandbox = notes.get("io.kubernetes.cri.container-type") == "sandbox"
    return _pod(notes.get("io.kubernetes.cri.sandbox-namespace"),
                notes.get("io.kubernetes.cri.sandbox-name"),
                notes.get("io.kubernetes.cri.sandbox-uid"),
                "" if sandbox else notes.get("io.kubernetes.cri.container-name"),
                "containerd", where, None, sandbox)


def _pod(namespace, name, uid, container, runtime: str, where: str,
         labels, sandbox: bool) -> Pod | None:
    """A Pod if every name is what Kubernetes allows (a namespace and a
    container name are DNS labels, a pod name a DNS subdomain)."""
    if not (isinstance(namespace, str) and _DNS_LABEL.match(namespace)
            and isinstance(name, str) and _DNS_NAME.match(name)
            and isinstance(uid, str) and _UID.match(uid)
            and isinstance(container, str) and (container == "" if sandbox
                                                else _DNS_LABEL.match(container))):
        return None
    return Pod(namespace, name, uid, container, runtime, where, labels, sandbox)


def _annotations(spec: dict) -> dict:
    notes = spec.get("annotations") if isinstance(spec, dict) else None
    return notes if isinstance(notes, dict) else {}


def _json_labels(text) -> dict | None:
    if not isinstance(text, str):
        return None
    try:
        labels = json.loads(text)
    except ValueError:
        return None
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        return None
    return labels


def _own_labels(labels: dict | None) -> tuple[tuple[str, str], ...] | None:
    """The pod's labels, without the kubelet's io.kubernetes.* ones; only
    keys and values Kubernetes accepts."""
    if labels is None:
        return None
    own = sorted((k, v) for k, v in labels.items()
                 if not k.startswith("io.kubernetes.") and _LABEL_KEY.match(k)
                 and _LABEL_VALUE.match(v))
    return tuple(own[:LABELS_MAX])


def _read_trusted(path: str, most: int, owner: int) -> bytes | None:
    """The file, if it is a regular file of ``owner``'s (root's) that
    nobody else may write, of at most ``most`` bytes; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_mode & 0o022 \
                or st.st_size > most:
            return None
        chunks, left = [], most
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _load(path: str, owner: int) -> dict | None:
    raw = _read_trusted(path, RECORD_MAX, owner)
    if raw is None:
        return None
    try:
        spec = json.loads(raw)
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


_BY_ROOT: dict[str, Records] = {}


def records(root: str) -> Records | None:
    """The records for processes under the /proc ``root`` (the real /proc: the
    node's runtimes; a test's fixture tree: what the test gave it)."""
    known = _BY_ROOT.get(root)
    if known is None and root == "/proc":
        known = _BY_ROOT[root] = Records()
    return known


def read_from(dirs: Sequence[str] | None) -> None:
    """The node's runtimes keep their records under ``dirs`` (--runtime-dir;
    None: the usual places, DEFAULT_DIRS)."""
    if dirs is not None:
        use("/proc", Records(dirs))


def use(root: str, where: Records) -> None:
    """Read pods for the /proc ``root``'s processes from ``where`` (config
    ``runtime_dir``; tests)."""
    _BY_ROOT[root] = where
