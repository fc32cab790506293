"""The container image as the DaemonSet runs it (#23), built offline with
podman: the base is a debootstrapped Debian 12 tree imported as an image
(no registry is reachable), the image adds the Debian package
(scripts/build-image).  Run with host PID, the DaemonSet's capability set, a
read-only root, the config from a 0777 directory mounted read-only (as a
ConfigMap is), and /run/resreap from the host (one watch per node).  It
reaps a leak on the host, spares the rest, answers /healthz; a writable
config directory is refused; a host-installed watch keeps the node's one
lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

import cri
from debtree import debian_tree
from procs import patience, until
from sidebyside import host_share
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.image, pytest.mark.xdist_group("image")]

ROOT = Path(__file__).resolve().parents[2]

# What the package needs at run time, in the base: the image build needs
# no network (dpkg -i is enough).
BASE_PACKAGES = ["libbpf1", "python3", "iproute2", "ca-certificates"]
CAPS = ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "KILL"]
# This host: crun refuses its hybrid (v1 and v2) cgroup hierarchies, runc
# does not; podman's default rlimits exceed the hard ones here and there is
# no CAP_SYS_RESOURCE to raise them (scripts/build-image does the same).
ENGINE = ["--runtime", "runc"] if shutil.which("runc") else []
LIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096"]


def _podman(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def image(root_ready, tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup --test installs it)")
    tag = f"localhost/resreap-test:{uuid.uuid4().hex[:8]}"
    debs = tmp_path_factory.mktemp("image-debs")
    with host_share(tmp_path_factory):
        tree = debian_tree(BASE_PACKAGES)
        base = f"localhost/resreap-test-base:{tree.name}"
        if _podman("image", "exists", base).returncode != 0:
            tar = subprocess.Popen(["tar", "-C", str(tree), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(["podman", "import", "-", base], stdin=tar.stdout,
                                      capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            tar.wait()
            assert imported.returncode == 0, imported.stderr
        built = subprocess.run([str(ROOT / "scripts/build-deb"), str(debs)],
                               capture_output=True, text=True, timeout=900)
        assert built.returncode == 0, built.stderr[-3000:]
        deb = next(debs.glob("resreap_*.deb"))
        made = subprocess.run([str(ROOT / "scripts/build-image"), "--base", base,
                               "--deb", str(deb), "--tag", tag],
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stderr[-3000:]
    yield tag
    _podman("rmi", "-f", tag)


@pytest.fixture
def configmap(tmp_path, tag):
    """The config as a ConfigMap volume holds it: a 0777 directory."""
    conf = tmp_path / "configmap"
    conf.mkdir()
    (conf / "resreap.toml").write_text(f'[watch]\nfilter = "{tag[4:]}"\nlimit = 2\n'
                                       "grace = 1.0\nwait = 1.0\n")
    os.chmod(conf, 0o777)
    return conf


@pytest.fixture
def run_dir(tmp_path):
    """The host's /run/resreap for this test (the lock's directory)."""
    d = tmp_path / "run-resreap"
    d.mkdir(mode=0o700)
    return d


def daemonset(image: str, configmap: Path, run_dir: Path, read_only_config: bool = True,
              port: int | None = None, tasks: str | None = None) -> tuple[str, ...]:
    """`podman run` as the DaemonSet runs the pod (the image's entrypoint
    is resreap: WatchRun appends `watch --json ...`)."""
    argv = ["podman", *ENGINE, "run", "--rm", "-i", "--name", f"resreap-test-{uuid.uuid4().hex[:8]}",
            *LIMITS,
            "--pid=host", "--network=host", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop=ALL", *(f"--cap-add={c}" for c in CAPS),
            # Kubernetes' defaults for a pod that sets none (and the
            # DaemonSet's AppArmor annotation).
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "no-new-privileges",
            "-v", f"{configmap}:/etc/resreap{':ro' if read_only_config else ''}",
            "-v", f"{run_dir}:/run/resreap",
            "-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro",
            # containerd's task bundles, read-only, at the host's path
            # (docs/kubernetes.md): what names a pod's processes.
            *(["-v", f"{tasks}:{tasks}:ro"] if tasks else []), image]
    return tuple(argv)


def _metrics_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_image_reaps_a_host_leak_spares_the_rest_and_answers_healthz(
        image, configmap, run_dir, actors, tag):
    port = _metrics_port()
    leaker = actors("leaky-server", "127.0.0.1", tag)
    other = actors("leaky-server", "127.0.0.1")        # not selected: spared
    pod = daemonset(image, configmap, run_dir)
    run = WatchRun(image, "--config", "/etc/resreap/resreap.toml", "-f", tag[4:],
                   "--metrics", f"127.0.0.1:{port}", timeout=120, wrap=pod[:-1])
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START, timeout=60)
        assert start["backend"] == "bpf" and start["loader"] == "core", start
        assert start["lock"] == "enforced"
        actors("clients", "127.0.0.1", leaker.port, 2, tag).send("close", "CLOSED")
        actors("clients", "127.0.0.1", other.port, 2).send("close", "CLOSED")
        reap = run.wait_for(lambda e: e["event"] == Event.REAP, timeout=10)
        assert reap["pid"] == leaker.pid
        assert run.outcome(leaker.pid)["result"] == "terminated"
        time.sleep(patience(2))
        assert other.alive() and not run.find(
            lambda e: e["event"] == Event.REAP and e["pid"] == other.pid)
        health = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status == 200 and health.read() == b"ok\n"
        # `kubectl exec POD -- resreap top`: its own dry run, beside the
        # pod's watch, lists the watch's reap.
        top = _podman(*ENGINE, "exec", pod[pod.index("--name") + 1], "resreap", "top", "--json",
                      "-f", tag[4:], timeout=patience(120))
        assert top.returncode == 0, top.stderr
        frame = json.loads(top.stdout)
        assert frame["backend"] == "bpf" and frame["watch"]             # the pod's watch (host pids)
        assert b"watch" in Path(f"/proc/{frame['watch']}/cmdline").read_bytes()
        assert [r for r in frame["reaps"] if r["pid"] == leaker.pid
                and r["result"] == "terminated"], frame["reaps"]
    finally:
        assert run.stop() == 0


def test_a_writable_config_directory_is_refused(image, configmap, run_dir):
    """The same 0777 directory mounted writable: anyone who can write it
    could give root a hook; refused, exit 2, one line."""
    argv = daemonset(image, configmap, run_dir, read_only_config=False)
    run = subprocess.run([*argv, "watch", "--config", "/etc/resreap/resreap.toml"],
                         capture_output=True, text=True, timeout=patience(120))
    assert run.returncode == 2, run.stderr
    assert "writable by group or others" in run.stderr


def test_one_watch_per_node_beside_a_host_installed_resreap(image, configmap, run_dir,
                                                            resreap_bin, tag):
    """The host's /run/resreap is shared: a host-installed watch holds the
    node's lock, and the pod's watch refuses to act beside it."""
    host = WatchRun(resreap_bin, "-f", tag[4:],
                    env=dict(os.environ, RESREAP_LOCK=str(run_dir / "watch.lock")))
    try:
        assert host.wait_for(lambda e: e["event"] == Event.START)["lock"] == "enforced"
        argv = daemonset(image, configmap, run_dir)
        pod = subprocess.run([*argv, "watch", "--config", "/etc/resreap/resreap.toml"],
                             capture_output=True, text=True, timeout=patience(120))
        assert pod.returncode != 0 and "another resreap watch is running" in pod.stderr
    finally:
        assert host.stop() == 0


def test_the_image_names_a_leaking_pods_namespace_pod_and_container(
        image, configmap, run_dir, runtime, actors, tag):
    """A leaking server in a real containerd pod, reaped by the image as the
    DaemonSet runs it, with containerd's task bundles mounted read-only."""
    daemon, client, work = runtime
    port = _metrics_port()
    uid = str(uuid.uuid4())
    logs = work / f"logs-{uid}"
    logs.mkdir()
    spec = cri.PodSpec("checkout-7d9f6", "shop", uid, {}, f"/kubepods/besteffort/pod{uid}",
                       str(logs))
    pod_id = client.run_pod(spec)
    try:
        cid = client.create(pod_id, spec, "fe", daemon.image, [
            "python3", "/actors/actors.py", "pod-leaker", "127.0.0.1", str(port), tag],
            mounts=[("/actors", str(ROOT / "tests"))])
        client.start(cid)
        tasks = f"{daemon.state}/io.containerd.runtime.v2.task"
        pod = daemonset(image, configmap, run_dir, tasks=tasks)
        run = WatchRun(image, "--config", "/etc/resreap/resreap.toml", "-f", tag[4:],
                       "--runtime-dir", daemon.state, timeout=120, wrap=pod[:-1])
        try:
            listening = patience(30) + time.monotonic()
            while time.monotonic() < listening and subprocess.run(
                    ["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                    text=True).stdout.strip() == "":
                time.sleep(0.1)
            actors("clients", "127.0.0.1", port, 3).send("close", "CLOSED")
            reap = run.wait_for(lambda e: e["event"] == Event.REAP, timeout=30)
            assert (reap["namespace"], reap["pod"], reap["container"]) == \
                ("shop", "checkout-7d9f6", "fe")
            assert reap["container_id"] == cid[:12] and reap["pod_uid"] == uid
            # The leaker is its container's pid 1, deaf to SIGTERM without
            # a handler: SIGKILL after the wait ends it.
            assert run.outcome(reap["pid"], 20)["result"] == "killed"
            assert until(lambda: client.state(cid) == cri.EXITED, 20)
        finally:
            assert run.stop() == 0
    finally:
        client.remove_pod(pod_id)

