"""#32 on fixture trees: who a pod's process is, from the runtime's records
(host/pods) under the cgroup path that names its pod (host/supervisor);
what is believed and what is not; the cache; rules and selectors by
Kubernetes identity; whom kill = "container" signals (engine/containers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from resreap.engine.containers import main_process
from resreap.engine.filters import Filters
from resreap.engine.rules import Facts, Match
from resreap.host import pods, supervisor
from resreap.host.pods import Records, Ref
from resreap.host.procinfo import Proc

ME = os.geteuid()
CID = "4c1d2a9e7f03" + "a" * 52
SIDE = "5d" * 32
SANDBOX = "9e" * 32
UID = "6b0e2d6c-1a4f-4b8e-9d5e-2f7c1c0b3a11"
OTHER_UID = "0f0e2d6c-1a4f-4b8e-9d5e-2f7c1c0b3a99"


def cgroupfs(cid: str = CID, uid: str = UID) -> str:
    return f"0::/kubepods/burstable/pod{uid}/{cid}\n"


def systemd_driver(cid: str = CID, uid: str = UID) -> str:
    return (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{uid.replace('-', '_')}.slice/cri-containerd-{cid}.scope\n")


def containerd_record(state: Path, cid: str, *, namespace="shop", name="checkout-7d9f6",
                      uid=UID, container="fe", kind="container", init: int | None = None,
                      mode: int = 0o644) -> Path:
    where = state / "io.containerd.runtime.v2.task/k8s.io" / cid
    where.mkdir(parents=True)
    notes = {"io.kubernetes.cri.container-type": kind,
             "io.kubernetes.cri.sandbox-namespace": namespace,
             "io.kubernetes.cri.sandbox-name": name, "io.kubernetes.cri.sandbox-uid": uid}
    if kind == "container":
        notes["io.kubernetes.cri.container-name"] = container
    (where / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": notes}))
    (where / "config.json").chmod(mode)
    if init is not None:
        (where / "init.pid").write_text(str(init))
    return where


def crio_record(runroot: Path, cid: str, labels: dict, kind="container", sandbox_id="") -> Path:
    where = runroot / "overlay-containers" / cid / "userdata"
    where.mkdir(parents=True)
    notes = {"io.kubernetes.cri-o.Labels": json.dumps(labels),
             "io.kubernetes.cri-o.ContainerType": kind,
             "io.kubernetes.cri-o.SandboxID": sandbox_id}
    (where / "config.json").write_text(json.dumps({"annotations": notes}))
    (where / "config.json").chmod(0o644)
    return where


@pytest.fixture
def state(tmp_path):
    return tmp_path / "containerd"


@pytest.fixture
def records(state, tmp_path):
    return Records([str(state), str(tmp_path / "crio")], owner=ME)


def pod_of(text: str, records: Records):
    where = supervisor.parse(text, False)
    return where._replace(pod=records.pod(where.ref)) if where.ref else where


@pytest.mark.parametrize("text", [cgroupfs(), systemd_driver(),
                                  f"0::/kubepods/pod{UID}/crio-{CID}\n",
                                  f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/"
                                  f"crio-{CID}.scope\n",
                                  # read from inside a DaemonSet's cgroup namespace
                                  f"0::/../../kubepods/besteffort/pod{UID}/{CID}\n"])
def test_both_cgroup_drivers_name_the_pod_and_its_container(text):
    assert supervisor.parse(text, False).ref == Ref(CID, UID)


@pytest.mark.parametrize("text", [
    f"0::/system.slice/docker-{CID}.scope\n",           # a container, in no pod
    f"0::/kubepods/burstable/{CID}\n",                  # no pod cgroup above it
    # a user's cgroups, named like a pod's: the user's to choose
    f"0::/user.slice/user-1000.slice/user@1000.service/pod{UID}/{CID}\n",
    # a cgroup the container made below its own, named like another pod's
    f"0::/kubepods/burstable/pod{UID}/{CID}/pod{OTHER_UID}/{SIDE}\n",
])
def test_only_the_runtimes_outermost_container_under_its_pod_is_a_pod_container(text):
    where = supervisor.parse(text, False)
    assert where.ref is None or where.ref == Ref(CID, UID)


def test_a_containerd_pod_is_named_by_its_bundle_and_reported_so(state, records):
    containerd_record(state, CID)
    where = pod_of(systemd_driver(), records)
    assert where.pod.shown == "shop/checkout-7d9f6" and where.pod.runtime == "containerd"
    assert where.pod.labels is None  # containerd keeps them behind its socket
    assert where.fields() == {"unit": f"cri-containerd-{CID}.scope", "namespace": "shop",
                              "pod": "checkout-7d9f6", "container": "fe", "pod_uid": UID,
                              "container_id": CID[:12]}
    assert where.shown == "shop/checkout-7d9f6" and where.container_name == "fe"


def test_without_a_record_the_cgroup_path_still_says_which_pod(records):
    where = pod_of(cgroupfs(), records)
    assert where.pod is None
    assert where.fields() == {"pod_uid": UID, "container_id": CID[:12]}


def test_a_cri_o_pod_brings_its_labels_from_its_sandbox(tmp_path, records):
    kubelet = {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "checkout-7d9f6",
               "io.kubernetes.pod.uid": UID}
    crio_record(tmp_path / "crio", SANDBOX, {**kubelet, "app": "checkout", "tier": "fe",
                                             "bad key!": "x"}, kind="sandbox")
    crio_record(tmp_path / "crio", CID, {**kubelet, "io.kubernetes.container.name": "fe"},
                sandbox_id=SANDBOX)
    pod = pod_of(f"0::/kubepods/pod{UID}/crio-{CID}\n", records).pod
    assert (pod.namespace, pod.name, pod.container, pod.runtime) == \
        ("shop", "checkout-7d9f6", "fe", "cri-o")
    assert pod.labels == (("app", "checkout"), ("tier", "fe"))


@pytest.mark.parametrize("change", ["other-owner", "group-writable", "symlink", "uid", "name",
                                    "huge"])
def test_a_record_that_cannot_be_believed_names_no_pod(state, tmp_path, change):
    """Another's file, one others may write, a symlink, a record for another
    pod UID than the cgroup's, a name Kubernetes would refuse, a file no
    runtime writes: no identity at all."""
    if change == "symlink":
        real = containerd_record(tmp_path / "elsewhere", CID)
        link = state / "io.containerd.runtime.v2.task/k8s.io" / CID
        link.mkdir(parents=True)
        (link / "config.json").symlink_to(real / "config.json")
    elif change == "huge":
        where = containerd_record(state, CID)
        (where / "config.json").write_text(" " * (pods.RECORD_MAX + 1))
    else:
        containerd_record(state, CID, mode=0o664 if change == "group-writable" else 0o644,
                          uid=OTHER_UID if change == "uid" else UID,
                          name="Checkout;$(id)" if change == "name" else "checkout-7d9f6")
    owner = ME + 1 if change == "other-owner" else ME
    assert Records([str(state)], owner=owner).pod(Ref(CID, UID)) is None


def test_one_read_per_container_and_gone_with_it(state):
    now = [0.0]
    records = Records([str(state)], clock=lambda: now[0], owner=ME)
    where = containerd_record(state, CID)
    for _ in range(100):
        assert records.pod(Ref(CID, UID)).name == "checkout-7d9f6"
    assert records.reads == 1
    now[0] += pods.RECHECK + 1
    assert records.pod(Ref(CID, UID)) is not None and records.reads == 1  # a stat, no read
    for name in os.listdir(where):
        os.unlink(where / name)
    where.rmdir()
    assert records.forget_gone() == 1
    now[0] += pods.RECHECK + 1
    assert records.pod(Ref(CID, UID)) is None


def test_rules_and_selectors_by_kubernetes_identity(state, records):
    containerd_record(state, CID)
    where = pod_of(cgroupfs(), records)
    facts = Facts("python3 app.py", where, frozenset({0}))
    assert Match(namespace="shop").wants(facts, 80)
    assert Match(namespace="sh*", pod="checkout-*", container_name="fe").wants(facts, 80)
    assert not Match(namespace="other").wants(facts, 80)
    assert not Match(namespace="shop", container_name="sidecar").wants(facts, 80)
    # containerd's pods have no labels known: a labels rule never matches them
    assert not Match(namespace="shop", labels=(("app", "checkout"),)).wants(facts, 80)
    assert Match(namespace="shop").trusted and not Match(pod="checkout-*").trusted
    assert Filters.parse(None, (), (), namespace="shop").wants(1, "", where)
    assert not Filters.parse(None, (), (), pod="payment-*").wants(1, "", where)
    host = supervisor.parse("0::/system.slice/nginx.service\n", False)
    assert not Filters.parse(None, (), (), namespace="*").wants(1, "", host)


def test_a_restarted_pod_container_is_the_same_command_to_the_storm_bound(state, records):
    """The kubelet restarts a killed container under a new id (a new scope
    with the systemd driver): kills before the restart still count."""
    from resreap.engine.policy import StormKey

    containerd_record(state, CID)
    containerd_record(state, SIDE)  # the same pod's fe, restarted
    before = pod_of(systemd_driver(CID), records)
    after = pod_of(systemd_driver(SIDE), records)
    assert before.unit != after.unit and before.container != after.container
    key = StormKey.of("default", {0}, before, "python3 app.py")
    assert key == StormKey.of("default", {0}, after, "python3 app.py")
    assert key.container == "shop/checkout-7d9f6/fe"
    other = pods.Records([str(state)], owner=ME)
    assert StormKey.of("default", {0}, pod_of(cgroupfs(CID, OTHER_UID), other),
                       "python3 app.py") != key


def test_the_pods_sandbox_is_never_a_pod_to_select(state, records):
    containerd_record(state, SANDBOX, kind="sandbox")
    where = pod_of(cgroupfs(SANDBOX), records)
    assert where.pod.sandbox and where.fields()["pod"] == "checkout-7d9f6"
    assert not Match(namespace="shop").wants(Facts("", where, frozenset()), 80)


def fake_proc(root: Path, pid: int, ppid: int, comm: str, cgroup: str) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    fields = ["S", str(ppid)] + ["0"] * 17 + ["100"] + ["0"] * 20
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
    (d / "cmdline").write_bytes(comm.encode() + b"\0")
    (d / "cgroup").write_text(cgroup)


@pytest.mark.parametrize("case, signalled", [
    ("main", 10), ("no-pod", None), ("sandbox", None), ("no-init", None),
    ("init-elsewhere", None), ("init-gone", None), ("is-main", 11)])
def test_kill_container_signals_only_its_own_containers_main_process(state, tmp_path, case,
                                                                     signalled):
    proc_root = tmp_path / "proc"
    fake_proc(proc_root, 11, 10, "worker", cgroupfs())
    fake_proc(proc_root, 10, 1, "sh", cgroupfs())
    fake_proc(proc_root, 20, 1, "sleep", cgroupfs(SIDE))  # a sibling container
    init = {"main": 10, "init-elsewhere": 20, "init-gone": 99, "is-main": 11}.get(case)
    cid = SANDBOX if case == "sandbox" else CID
    containerd_record(state, cid, init=init, kind="sandbox" if case == "sandbox" else "container")
    proc = Proc(str(proc_root))
    pods.use(proc.root, Records([str(state)], owner=ME))
    text = "0::/system.slice/x.service\n" if case == "no-pod" else cgroupfs(cid)
    where = pod_of(text, pods.records(proc.root))
    holder = proc.read(11)
    chosen = main_process(where, holder, proc)
    assert (chosen.main.pid if chosen.main else None) == signalled, chosen.why
    if signalled is None:
        assert "the process itself is signalled" in chosen.why


def test_a_container_kill_whose_holder_went_sends_nothing():
    """Under kill = "container", the holder exiting before the first signal
    leaves its container alone (it was alive, and is again a healthy one)."""
    import subprocess
    import sys

    from resreap.engine.killer import Target, execute
    from resreap.engine.rules import Plan
    from resreap.host.procinfo import HOST
    from resreap.model import Result

    main = subprocess.Popen(["sleep", "30"])
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        holder_info = HOST.read(holder.pid)
        holder.stdin.close()
        holder.wait()
        target = Target(holder_info, (), 0.0, inodes=(12345,), limit=1,
                        signalled=HOST.read(main.pid), kill_why="its container's main process")
        outcome = execute(target, Plan(wait=0.1), HOST)
        assert outcome.result is Result.RESOLVED and outcome.signals == ()
        assert main.poll() is None
    finally:
        main.kill()
        main.wait()


def test_doctor_says_whether_pods_can_be_named(tmp_path, state):
    from resreap.ops.doctor import OK, WARN, _pods

    cgroups = tmp_path / "cgroup"
    cgroups.mkdir()
    assert _pods(str(cgroups), [str(state)]).detail.startswith("not a Kubernetes node")
    (cgroups / "kubepods.slice").mkdir()
    blind = _pods(str(cgroups), [str(state)])
    assert blind.status == WARN and "--runtime-dir" in blind.fix
    containerd_record(state, CID)
    seen = _pods(str(cgroups), [str(state)])
    assert seen.status == OK and "1 under" in seen.detail
