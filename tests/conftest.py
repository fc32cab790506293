"""Shared fixtures.  Kernel tests (marked ``kernel``) need root and BPF; with
RESREAP_REQUIRE_KERNEL=1 (scripts/test, CI) every skipped test is turned into
a failure, so a CI run can never pass without the kernel tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# first: it sets the environment every watch a test starts inherits
from sidebyside import LOCK_DIR, host_share  # noqa: E402
from procs import Actor  # noqa: E402
from watchrun import EVERY_BACKEND, Runs  # noqa: E402

REQUIRE_KERNEL = os.environ.get("RESREAP_REQUIRE_KERNEL") == "1"


def pytest_sessionfinish(session):
    if LOCK_DIR:
        shutil.rmtree(LOCK_DIR, ignore_errors=True)


UNIT_DIR = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items):
    """``-m unit`` means the unit layer and nothing else: no root, no
    kernel, no container (``-m "not kernel"`` also booted the systemd one)."""
    for item in items:
        if UNIT_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_KERNEL and report.skipped:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"test skipped but RESREAP_REQUIRE_KERNEL=1: {reason}"


def _bpf_problem() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    from resreap.sources.bpf_events import check_usable
    from resreap.errors import ResreapError

    try:
        check_usable()
    except ResreapError as exc:
        return str(exc)
    return None


@pytest.fixture(autouse=True)
def host_turn(request, tmp_path_factory):
    with host_share(tmp_path_factory, request.node.get_closest_marker("alone") is not None):
        yield


@pytest.fixture(scope="session")
def bpf_ready():
    problem = _bpf_problem()
    if problem:
        pytest.skip(f"BPF unavailable: {problem}")


@pytest.fixture(scope="session")
def root_ready():
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def actors():
    """Start actors with ``actors(role, *args)``; every one is reaped."""
    started: list[Actor] = []

    def start(role: str, *args, **kw) -> Actor:
        actor = Actor(role, *args, **kw)
        started.append(actor)
        return actor

    yield start
    for actor in reversed(started):
        actor.reap()


@pytest.fixture
def tag():
    """A word for a test's command lines: -f with it touches nothing else."""
    return f"tag=rr{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_netns(root_ready):
    """Fresh network namespaces with loopback up; deleted afterwards."""
    made: list[str] = []

    def make() -> str:
        name = f"resreap-t-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def netns(make_netns):
    """A fresh network namespace with loopback up; deleted afterwards."""
    return make_netns()


@pytest.fixture(scope="module")
def runtime(root_ready, tmp_path_factory):
    """A real containerd (tests/cri.py), for one module: (the daemon, a CRI
    client, a work directory).  Its store is shared between runs, so the
    modules that use it share an xdist group ("image")."""
    import cri

    work = tmp_path_factory.mktemp("containerd")
    daemon = cri.start(work)
    client = cri.Cri(daemon.socket)
    try:
        yield daemon, client, work
    finally:
        client.close()
        cri.stop(daemon)


@pytest.fixture
def resreap_bin() -> str:
    exe = Path(sys.executable).with_name("resreap")
    if not exe.exists():
        pytest.skip("resreap is not installed in this Python's environment (run scripts/setup)")
    return str(exe)


def pytest_generate_tests(metafunc):
    """A test that takes ``backend`` runs on BPF; one marked
    ``each_backend`` (what an event source changes: which sockets are
    seen, when, in which namespace, whose) on every source its module
    varies (``EACH_BACKEND``, by default all of EVERY_BACKEND)."""
    if "backend" in metafunc.fixturenames:
        every = metafunc.definition.get_closest_marker("each_backend") is not None
        backends = getattr(metafunc.module, "EACH_BACKEND", EVERY_BACKEND)
        metafunc.parametrize("backend", list(backends) if every else ["bpf"], indirect=True)


@pytest.fixture
def backend(request):
    request.getfixturevalue("bpf_ready" if request.param == "bpf" else "root_ready")
    return request.param


@pytest.fixture
def watch_runs(resreap_bin):
    """``resreap watch --json`` runs, each stopped after the test."""
    runs = Runs(resreap_bin)
    yield runs
    runs.stop()
