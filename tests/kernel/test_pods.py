"""#32 against a real container runtime: Debian's containerd (CRI plugin,
runc) started here and driven through CRI as the kubelet drives it
(tests/cri.py).  Leaking servers run in real pods (hostNetwork, a
kubelet-style cgroup parent); a real `watch` on the host names them by
namespace, pod and container in every place a reap is reported, applies
the rule of their namespace and not another's, and with kill = "container"
ends the whole container through its main process while a sibling
container keeps running.  The leaker claims another pod's name in every way
a process can; it never gets it."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import cri
from procs import until
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.xdist_group("image")]

TESTS = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pods:
    """Pods made for one test; every one stopped and removed after."""

    def __init__(self, runtime) -> None:
        self.daemon, self.client, self.work = runtime
        self.made: list[str] = []

    def pod(self, namespace: str, name: str, labels: dict | None = None) -> cri.PodSpec:
        uid = str(uuid.uuid4())
        logs = self.work / f"logs-{uid}"
        logs.mkdir()
        spec = cri.PodSpec(name, namespace, uid, labels or {}, f"/kubepods/besteffort/pod{uid}",
                           str(logs))
        pod_id = self.client.run_pod(spec)
        self.made.append(pod_id)
        return spec._replace(log_dir=str(logs)), pod_id

    def container(self, made, name: str, command: list[str]) -> str:
        spec, pod_id = made
        cid = self.client.create(pod_id, spec, name, self.daemon.image, command,
                                 env={"POD_NAME": "victim-0"},
                                 mounts=[("/actors", str(TESTS))])
        self.client.start(cid)
        return cid

    def leaker(self, made, name: str, port: int, tag: str) -> str:
        """A container whose main process is a shell that keeps running
        when its worker, the leaking server, is killed (the half-alive
        container docs/kubernetes.md warns of)."""
        return self.container(made, name, [
            "/bin/sh", "-c", f"python3 /actors/actors.py pod-leaker 127.0.0.1 {port} {tag} & "
                             "while :; do sleep 1; done"])

    def remove(self) -> None:
        for pod_id in reversed(self.made):
            with contextlib.suppress(Exception):
                self.client.remove_pod(pod_id)


@pytest.fixture
def pods(runtime):
    made = Pods(runtime)
    yield made
    made.remove()


def listening_pid(port: int, timeout: float = 30) -> int:
    """The pid of the process listening on ``port`` (the leaker in its pod)."""
    found: list[int] = []

    def look() -> bool:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        if "pid=" in out:
            found.append(int(out.split("pid=")[1].split(",")[0]))
        return bool(found)

    assert until(look, timeout), f"nothing listens on {port}"
    return found[0]


def leak(actors, port: int, n: int) -> None:
    client = actors("clients", "127.0.0.1", port, n)
    client.send("close", "CLOSED")


def config(tmp_path, text: str) -> str:
    path = tmp_path / "pods.toml"
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def test_a_leak_in_a_pod_is_reaped_under_its_namespaces_rule_and_named_everywhere(
        bpf_ready, runtime, pods, actors, watch_runs, resreap_bin, tag, tmp_path):
    daemon = runtime[0]
    shop_port, other_port = free_port(), free_port()
    shop = pods.pod("shop", "checkout-7d9f6", {"app": "checkout"})
    cid = pods.leaker(shop, "fe", shop_port, tag)
    pods.container(shop, "sidecar", ["/bin/sleep", "infinity"])
    other = pods.pod("other", "victim-0")
    pods.leaker(other, "fe", other_port, tag)
    leaker, bystander = listening_pid(shop_port), listening_pid(other_port)
    hostname = subprocess.run(["nsenter", "-t", str(leaker), "-u", "hostname"],
                              capture_output=True, text=True)
    assert hostname.stdout.strip() == "victim-0", hostname.stderr  # it claims another pod
    env_file = tmp_path / "hook.env"
    conf = config(tmp_path, f"""\
[watch]
filter = "{tag}"
default = "ignore"
runtime_dir = ["{daemon.state}"]

[[rule]]
name = "other-ns"
match = {{ namespace = "other", cmd = "{tag}" }}
limit = 1000

[[rule]]
name = "shop"
match = {{ namespace = "shop", pod = "checkout-*", container_name = "fe", cmd = "{tag}" }}
limit = 2
grace = 1
hook = "env | grep ^RESREAP_ > {env_file}"
""")
    # A runtime that hangs changes nothing: resreap never asks it, it reads
    # the records it left (containerd stopped dead until the test ends).
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        _reaped_and_named(run_and_leak(watch_runs, conf, actors, shop_port, other_port),
                          leaker, bystander, cid, shop, env_file, conf, resreap_bin)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    top = subprocess.run([resreap_bin, "top", "--json", "-f", tag, "--runtime-dir", daemon.state,
                          "--namespace", "other"], capture_output=True, text=True, timeout=120)
    assert top.returncode == 0, top.stderr
    rows = json.loads(top.stdout)["rows"]
    assert [(r["pid"], r["namespace"], r["pod"]) for r in rows] == [
        (bystander, "other", "victim-0")]


def run_and_leak(watch_runs, conf, actors, *ports):
    run = watch_runs.start("--config", conf)
    for port in ports:
        leak(actors, port, 3)
    return run


def _reaped_and_named(run, leaker, bystander, cid, shop, env_file, conf, resreap_bin):
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == leaker, 30)
    # Named by the runtime's record, not by what the process claims.
    assert (reap["namespace"], reap["pod"], reap["container"]) == ("shop", "checkout-7d9f6", "fe")
    assert reap["container_id"] == cid[:12] and reap["pod_uid"] == shop[0].uid
    assert reap["rule"] == "shop" and reap["comm"] == "victim-0"
    outcome = run.outcome(leaker, 20)
    assert outcome["result"] in ("terminated", "killed")
    assert (outcome["namespace"], outcome["pod"], outcome["container"]) == \
        ("shop", "checkout-7d9f6", "fe")
    hook = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert hook["RESREAP_NAMESPACE"] == "shop" and hook["RESREAP_POD"] == "checkout-7d9f6"
    assert hook["RESREAP_CONTAINER"] == "fe" and hook["RESREAP_POD_UID"] == shop[0].uid
    assert hook["RESREAP_CONTAINER_ID"] == cid[:12]
    # The other namespace's leak is its own rule's, whose limit it is far under.
    time.sleep(2)
    assert not run.find(lambda e: e.get("pid") == bystander and e["event"] in (
        Event.REAP, Event.WOULD_REAP))
    out = subprocess.run([resreap_bin, "rules", "--config", conf, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    holders = {h["pid"]: h for h in json.loads(out.stdout)["holders"]}
    assert holders[bystander]["rule"] == "other-ns"
    assert (holders[bystander]["namespace"], holders[bystander]["pod"],
            holders[bystander]["container"]) == ("other", "victim-0", "fe")
    run.stop()


def test_kill_container_ends_the_container_through_its_main_process(
        bpf_ready, runtime, pods, actors, watch_runs, tag, tmp_path):
    daemon, client = runtime[0], runtime[1]
    port = free_port()
    shop = pods.pod("shop", "worker-5c8d7")
    fe = pods.leaker(shop, "fe", port, tag)
    sidecar = pods.container(shop, "sidecar", ["/bin/sleep", "infinity"])
    leaker = listening_pid(port)
    main = int(Path(daemon.state, "io.containerd.runtime.v2.task/k8s.io", fe,
                    "init.pid").read_text())
    assert main != leaker
    conf = config(tmp_path, f"""\
[watch]
filter = "{tag}"
runtime_dir = ["{daemon.state}"]
grace = 1
wait = 1

[[rule]]
name = "restart-container"
match = {{ namespace = "shop", cmd = "{tag}" }}
kill = "container"
""")
    run = watch_runs.start("--config", conf)
    leak(actors, port, 3)
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == leaker, 30)
    assert reap["kill"] == "container" and reap["signalled"] == main
    assert reap["plan"].endswith("to its container's main process")
    outcome = run.outcome(leaker, 20)
    # The shell (pid 1 in its namespace) ignores SIGTERM: SIGKILL ends it.
    assert outcome["result"] == "killed" and outcome["signalled"] == main
    assert outcome["container_exited"] is True
    assert until(lambda: client.state(fe) == cri.EXITED, 20)
    assert client.state(sidecar) == cri.RUNNING


def test_kill_container_outside_a_pod_signals_the_process(bpf_ready, actors, watch_runs, tag):
    """A process in no pod: the process itself, and the line says why."""
    server = actors("leaky-server", "127.0.0.1", "eof", tag)
    leak(actors, server.port, 2)
    run = watch_runs.start("-f", tag, "-i", "1", "--kill", "container")
    reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, 20)
    assert reap["kill"] == "process" and "not in a pod" in reap["kill_detail"]
    assert "signalled" not in reap
    assert run.outcome(server.pid, 20)["result"] == "terminated" and server.wait_dead(5)
