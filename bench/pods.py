"""What naming a pod's process costs (#32): the runtime's record read
once per container, then cached; and what a process outside any pod pays.

    sudo .venv/bin/python bench/pods.py [--record CONFIG.JSON] [--containers 1000]

A runtime state directory is made in a temporary directory with
``--containers`` containerd task bundles, each holding ``--record`` (a
real containerd config.json, its pod annotations rewritten per
container; without it, a synthetic one of about 8 KiB: larger than the
3.4 KiB containerd 1.6 wrote for the tests' pods, as a pod with many
mounts and variables has).  Measured, per process
whose cgroup path names a pod:

1. the first read of a container (a fresh cache: open, fstat, read,
   JSON parse, checks), each container once;
2. the cached lookup (what every later read of that process's facts pays);
3. the full read of a process's supervisor as the rule book does it, for a
   real process of this host outside any pod (cgroup read and parse): the
   baseline a node without Kubernetes keeps.

Prints markdown; absolute figures drift between days.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resreap.host import supervisor  # noqa: E402
from resreap.host.pods import Records, Ref  # noqa: E402
from resreap.host.procinfo import HOST  # noqa: E402


def synthetic() -> dict:
    env = [f"VAR_{i}=value-{i:04d}-" + "x" * 40 for i in range(60)]
    mounts = [{"destination": f"/mnt/{i}", "type": "bind", "source": f"/var/lib/kubelet/pods/{i}",
               "options": ["rbind", "rprivate", "ro"]} for i in range(40)]
    return {"ociVersion": "1.0.2-dev", "process": {"args": ["python3", "app.py"], "env": env},
            "mounts": mounts, "annotations": {}}


def bundles(state: Path, spec: dict, n: int) -> list[tuple[Ref, str]]:
    made = []
    for i in range(n):
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        uid = str(uuid.uuid4())
        where = state / "io.containerd.runtime.v2.task/k8s.io" / cid
        where.mkdir(parents=True)
        spec["annotations"] = {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-namespace": "shop",
            "io.kubernetes.cri.sandbox-name": f"checkout-{i}",
            "io.kubernetes.cri.sandbox-uid": uid, "io.kubernetes.cri.container-name": "fe"}
        (where / "config.json").write_text(json.dumps(spec))
        made.append((Ref(cid, uid), f"0::/kubepods/burstable/pod{uid}/{cid}\n"))
    return made


def per_call(fn, items) -> float:
    began = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - began) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", help="a real containerd config.json")
    ap.add_argument("--containers", type=int, default=1000)
    args = ap.parse_args()
    spec = json.loads(Path(args.record).read_text()) if args.record else synthetic()
    size = len(json.dumps(spec))
    with tempfile.TemporaryDirectory() as tmp:
        made = bundles(Path(tmp), spec, args.containers)
        records = Records([tmp], owner=os.geteuid())
        first = per_call(records.pod, [ref for ref, _ in made])
        assert records.reads == len(made) and all(records.pod(ref) for ref, _ in made)
        cached = per_call(records.pod, [ref for ref, _ in made] * 20)
        parse_pod = per_call(lambda text: supervisor.parse(text, False), [t for _, t in made] * 5)
    me = os.getpid()
    host = per_call(lambda _: supervisor.read(me, HOST), range(5000))
    parse_host = per_call(lambda _: supervisor.parse("0::/system.slice/nginx.service\n", False),
                          range(20000))
    print(f"| {args.containers} containers, records of {size / 1024:.1f} KiB | per process |")
    print("|---|---|")
    print(f"| first read of a container's record | {first * 1e6:.0f} us |")
    print(f"| cached lookup | {cached * 1e6:.2f} us |")
    print(f"| parsing a pod's cgroup path | {parse_pod * 1e6:.1f} us |")
    print(f"| a host process's supervisor, read and parsed (no pod) | {host * 1e6:.1f} us |")
    print(f"| parsing a host service's cgroup path | {parse_host * 1e6:.1f} us |")


if __name__ == "__main__":
    main()
