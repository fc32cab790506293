"""A real containerd (Debian's, with its CRI plugin and runc), started for
the tests and driven through the CRI gRPC API as the kubelet drives it:
RunPodSandbox with pod metadata, labels and a kubelet-style cgroup parent,
then CreateContainer and StartContainer with container metadata.

The CRI messages are encoded here by hand (the protobuf wire format: a few
fields of k8s.io/cri-api's runtime/v1 api.proto, numbered as there), sent
with grpcio's generic calls: no generated code, no registry.  Images come
from the offline Debian tree (tests/debtree), imported into containerd
through podman's docker-archive, the pod sandbox's ("pause") image too."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from debtree import debian_tree
from procs import patience

# Kept across runs (its image store: an import is the slow part).
ROOT = Path(os.environ.get("RESREAP_CI_CACHE", "/var/cache/resreap-ci")) / "containerd"
PACKAGES = ["libbpf1", "python3", "iproute2", "ca-certificates"]  # the image test's tree
# Bumped when what the images are made with changes (the store is kept).
IMAGE_VERSION = 1
PATH = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# -- the protobuf wire format -------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value) -> bytes:
    """One field: a str, bytes (a message), a bool or an int (varint)."""
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, (bytes, bytearray)):
        return _varint(number << 3 | 2) + _varint(len(value)) + bytes(value)
    return _varint(number << 3) + _varint(int(value))


def message(*fields: tuple[int, object]) -> bytes:
    """Fields in order; None values left out, lists repeated."""
    out = b""
    for number, value in fields:
        for v in (value if isinstance(value, list) else [value]):
            if v is not None:
                out += field(number, v)
    return out


def string_map(number: int, pairs: dict[str, str]) -> list[tuple[int, bytes]]:
    return [(number, message((1, k), (2, v))) for k, v in sorted(pairs.items())]


def decode(raw: bytes) -> dict[int, list]:
    """Field number -> its values (bytes for length-delimited, int for
    varints); what a test reads of a reply."""
    out: dict[int, list] = {}
    i = 0
    while i < len(raw):
        key, i = _read_varint(raw, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value, i = _read_varint(raw, i)
        elif kind == 2:
            size, i = _read_varint(raw, i)
            value, i = raw[i:i + size], i + size
        elif kind == 1:
            value, i = raw[i:i + 8], i + 8
        elif kind == 5:
            value, i = raw[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {kind}")
        out.setdefault(number, []).append(value)
    return out


def _read_varint(raw: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = raw[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


# -- CRI ----------------------------------------------------------------

# NamespaceMode: CONTAINER, each container its own (the kubelet's pid
# namespace unless shareProcessNamespace); NODE, the host's (hostNetwork).
CONTAINER, NODE = 1, 2
RUNNING, EXITED = 1, 2  # ContainerState


class PodSpec(NamedTuple):
    name: str
    namespace: str
    uid: str
    labels: dict
    cgroup_parent: str
    log_dir: str

    def config(self) -> bytes:
        metadata = message((1, self.name), (2, self.uid), (3, self.namespace), (4, 0))
        host_net = message((1, NODE), (2, CONTAINER), (3, 0))
        linux = message((1, self.cgroup_parent), (2, message((1, host_net))))
        return message((1, metadata), (3, self.log_dir), *string_map(6, self.labels), (8, linux))


class Cri:
    def __init__(self, socket_path: str) -> None:
        import grpc

        self._channel = grpc.insecure_channel(f"unix://{socket_path}")

    def call(self, method: str, request: bytes, timeout: float = 60) -> dict[int, list]:
        stub = self._channel.unary_unary(f"/runtime.v1.RuntimeService/{method}")
        return decode(stub(request, timeout=timeout))

    def run_pod(self, spec: PodSpec) -> str:
        return self.call("RunPodSandbox", message((1, spec.config())))[1][0].decode()

    def create(self, pod_id: str, spec: PodSpec, name: str, image: str, command: list[str],
               env: dict[str, str] | None = None, mounts: list[tuple[str, str]] = ()) -> str:
        envs = [(6, message((1, k), (2, v))) for k, v in (env or {}).items()]
        binds = [(7, message((1, inside), (2, outside), (3, True))) for inside, outside in mounts]
        host_net = message((1, NODE), (2, CONTAINER), (3, 0))
        linux = message((2, message((3, host_net))))
        config = message((1, message((1, name), (2, 0))), (2, message((1, image))),
                         (3, command), *envs, *binds, (11, f"{name}.log"), (15, linux))
        reply = self.call("CreateContainer", message((1, pod_id), (2, config), (3, spec.config())))
        return reply[1][0].decode()

    def start(self, container_id: str) -> None:
        self.call("StartContainer", message((1, container_id)))

    def state(self, container_id: str) -> int:
        status = decode(self.call("ContainerStatus", message((1, container_id)))[1][0])
        return status.get(3, [0])[0]

    def remove_pod(self, pod_id: str) -> None:
        self.call("StopPodSandbox", message((1, pod_id)))
        self.call("RemovePodSandbox", message((1, pod_id)))

    def close(self) -> None:
        self._channel.close()


# -- containerd ----------------------------------------------------------

CONFIG = """\
version = 2
root = "{root}/lib"
state = "{state}"
[grpc]
  address = "{state}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # The sandbox's -998 needs CAP_SYS_RESOURCE, absent here: runc's init
  # dies with "can't get final child's PID" without this.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""


class Containerd(NamedTuple):
    proc: subprocess.Popen
    state: str     # its state directory: what resreap's --runtime-dir names
    socket: str
    image: str     # the Debian tree, python3 in it
    log: Path


def _podman(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, **kw)


def _ctr(sock: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "-a", sock, "-n", "k8s.io", *args], capture_output=True,
                          text=True, **kw)


def _import(sock: str, name: str, tree: Path, changes: list[str], work: Path) -> None:
    """The tree as image ``name`` in containerd's k8s.io namespace (once:
    the store is kept across runs)."""
    if name in _ctr(sock, "images", "ls", "-q").stdout.split():
        return
    tar = subprocess.Popen(["tar", "-C", str(tree), "-c", "."], stdout=subprocess.PIPE)
    made = subprocess.run(["podman", "import", *(a for c in changes for a in ("--change", c)),
                           "-", name], stdin=tar.stdout, capture_output=True, text=True, timeout=600)
    tar.stdout.close()
    tar.wait()
    assert made.returncode == 0, made.stderr
    archive = work / "image.tar"
    saved = _podman("save", "--format", "docker-archive", "-o", str(archive), name, timeout=600)
    assert saved.returncode == 0, saved.stderr
    loaded = _ctr(sock, "images", "import", "--no-unpack", str(archive), timeout=600)
    archive.unlink()
    assert loaded.returncode == 0, loaded.stderr
    _podman("rmi", "-f", name)


def start(work: Path) -> Containerd:
    """containerd with its CRI plugin, its state under /run (a runtime's
    state is on tmpfs), its store kept under ROOT."""
    tree = debian_tree(PACKAGES)
    image = f"localhost/resreap-pod:{tree.name}-{IMAGE_VERSION}"
    pause = f"localhost/resreap-pause:{tree.name}-{IMAGE_VERSION}"
    state = f"/run/resreap-test-containerd-{uuid.uuid4().hex[:8]}"
    ROOT.mkdir(parents=True, exist_ok=True)
    conf = work / "containerd.toml"
    conf.write_text(CONFIG.format(root=ROOT, state=state, pause=pause))
    log = work / "containerd.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["containerd", "--config", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    sock = f"{state}/containerd.sock"
    deadline = time.monotonic() + patience(30)
    while not os.path.exists(sock) and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    assert os.path.exists(sock), log.read_text()[-3000:]
    try:
        _import(sock, image, tree, [PATH], work)
        _import(sock, pause, tree, [PATH, 'CMD ["/bin/sleep", "infinity"]'], work)
    except BaseException:
        stop(Containerd(proc, state, sock, image, log))
        raise
    return Containerd(proc, state, sock, image, log)


def stop(daemon: Containerd) -> None:
    """containerd and every shim it started (they outlive it), and its state."""
    shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*-address {daemon.socket}"],
                           capture_output=True, text=True).stdout.split()
    daemon.proc.send_signal(signal.SIGTERM)
    try:
        daemon.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait()
    for pid in shims:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["umount", "-R", daemon.state], capture_output=True)
    shutil.rmtree(daemon.state, ignore_errors=True)
