"""Issue #21 (security and reliability, round three): each test is one
attack from the issue, run as the attacker would (an unprivileged user is
`nobody`, through setpriv: no user is made), against real processes.
docs/faults.md has the table (attack, before, after)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from procs import patience
from watchrun import WatchRun
from resreap.errors import ReloadFailed, UsageError
from resreap.host import procinfo
from resreap.ops import instance
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]
# What an event source changes runs on BPF and on polling (sock_diag).
EACH_BACKEND = ("bpf", "proc")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def as_nobody(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30, cwd="/")


@pytest.fixture
def lock_dir():
    """A lock directory where the unit's would be: under /run, root's."""
    path = f"/run/resreap-t-{uuid.uuid4().hex[:8]}"
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def test_7_a_user_cannot_squat_the_one_watch_lock(lock_dir):
    """flock needs only an open fd: under root's umask the lock was 0644 in
    a 0755 directory, and a user's `flock -x` taken while watch ran got the
    lock the moment it exited; no watch started again."""
    path = f"{lock_dir}/watch.lock"
    lock = instance.hold_watch_lock(path)
    try:
        assert lock.enforced
        squat = as_nobody(
            "import fcntl, sys\n"
            f"try:\n    f = open({path!r})\nexcept PermissionError:\n    sys.exit(3)\n"
            "fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\n")
        assert squat.returncode == 3, squat.stderr
        assert os.stat(lock_dir).st_mode & 0o777 == 0o700
        assert os.stat(path).st_mode & 0o777 == 0o600
        holder = instance.watch_holder(path)
        me = os.getpid()
        assert holder == instance.Holder(me, procinfo.HOST.start_time(me))
    finally:
        os.close(lock.fd)


def test_7_a_lock_directory_others_can_write_is_refused(lock_dir):
    os.mkdir(lock_dir, 0o700)
    os.chown(lock_dir, 65534, 65534)  # a user's directory where root's belongs
    with pytest.raises(UsageError, match="owned by uid 65534"):
        instance.hold_watch_lock(f"{lock_dir}/watch.lock")


def test_7_reload_never_signals_a_pid_the_lock_did_not_take(lock_dir, tmp_path):
    """The lock names its holder by pid and start time: a pid that now
    names another process (or a lock file with another's start) is not
    sent SIGHUP."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        wrong = instance.Holder(victim.pid, procinfo.HOST.start_time(victim.pid) + 1)
        with pytest.raises(ReloadFailed, match="not the watch"):
            instance.reload(wrong, timeout=0.5, path=str(tmp_path / "reload"))
        assert victim.poll() is None  # SIGHUP would have ended sleep
    finally:
        victim.kill()
        victim.wait()


# -- item 1: a user's thousand network namespaces --------------------------

# Run as nobody: N children, each in a user and network namespace of its
# own (what `unshare -Urn` makes) with a TCP listener there, so that each
# namespace has TCP sockets to look at.  SIGTERM ends them all.
NAMESPACES = r"""
import ctypes, os, signal, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
kids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        if libc.unshare(0x10000000 | 0x40000000) != 0:   # CLONE_NEWUSER | CLONE_NEWNET
            os._exit(1)
        s = socket.socket()
        s.bind(("0.0.0.0", 0))
        s.listen(1)
        signal.pause()
        os._exit(0)
    kids.append(pid)
def end(*_):
    for k in kids:
        os.kill(k, signal.SIGKILL)
    for k in kids:
        os.waitpid(k, 0)
    os._exit(0)
signal.signal(signal.SIGTERM, end)
print("READY", flush=True)
while True:
    signal.pause()
"""


@pytest.fixture
def user_namespaces():
    made = []

    def make(n: int) -> subprocess.Popen:
        proc = subprocess.Popen([*NOBODY, sys.executable, "-c", NAMESPACES, str(n)],
                                stdout=subprocess.PIPE, text=True, cwd="/")
        assert proc.stdout.readline().strip() == "READY"
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.terminate()
        proc.wait(30)


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]) / 1024


@pytest.mark.alone
@pytest.mark.each_backend
def test_1_a_users_namespaces_cannot_exhaust_the_fds(watch, actors, tag, user_namespaces,
                                                     backend):
    """300 namespaces made by nobody, under a hard limit of 200 fds: one
    netlink socket (and 1 MiB) per namespace made watch die with EMFILE
    before its start line.  Now it starts, says what it does not watch,
    stays within its fds, and reaps a real leak."""
    user_namespaces(300)
    server = actors("leaky-server", "127.0.0.1", tag)
    run = watch("-f", tag.split("=")[1], "--backend", backend, "-D",
                wrap=("prlimit", "--nofile=200:200", "--"))
    start = run.wait_for(lambda e: e["event"] == Event.START)
    assert start["fd_limit"] == 200
    unwatched = run.wait_for(lambda e: e["event"] == Event.UNWATCHED)
    assert unwatched["namespaces"] > 0 and unwatched["user_max"] == 64
    actors("clients", "127.0.0.1", server.port, 2, tag).send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, timeout=10)
    assert fds_of(run.proc.pid) < 200
    assert rss_mib(run.proc.pid) < 150
    assert not run.find(lambda e: e["event"] == Event.OUT_OF_FDS)


# -- item 9: the polling fallback and a namespace made after start ----------


@pytest.mark.each_backend
def test_9_a_namespace_made_after_start_is_watched_at_once(watch, actors, tag, make_netns,
                                                            backend):
    """A leak in a namespace that got its first process after the watch
    started: BPF reaped it, polling missed it for up to 30 s (the
    namespace set was refreshed every 30 s and a dump never retried)."""
    run = watch("-f", tag.split("=")[1], "--backend", backend, "-i", "0.5")
    here = make_netns()
    server = actors("leaky-server", "127.0.0.1", tag, netns=here)
    actors("clients", "127.0.0.1", server.port, 2, tag, netns=here).send("close", "CLOSED")
    run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, timeout=8)


# -- item 13: the log file's directories, the config read once ---------------


def test_13_a_log_file_in_a_users_directory_is_refused(tmp_path):
    """A user's directory in the log file's path could be swapped for a
    symlink (to /etc/cron.d) between runs: root would create its log there."""
    from resreap.ops.decisionlog import SafeFileHandler

    users = tmp_path / "logs"
    users.mkdir()
    os.chown(users, 65534, 65534)
    with pytest.raises(OSError, match="owned by uid 65534"):
        SafeFileHandler(str(users / "resreap.log"))
    assert not (users / "resreap.log").exists()


def test_13_the_config_read_is_the_file_that_was_checked(tmp_path):
    from resreap.ops import config

    conf = tmp_path / "a.toml"
    other = tmp_path / "b.toml"
    conf.write_text("limit = 3\n")
    other.write_text("hook = 'evil'\n")
    checked = config.check_trusted(str(other))   # as if swapped after the check
    with pytest.raises(UsageError, match="changed while it was checked"):
        config._read_checked(str(conf), checked)
    assert config.load(str(conf)) == {"limit": 3}


# -- a namespace reached through a process that left -------------------------


def test_a_namespace_whose_first_process_left_is_still_read(actors, tag, make_netns):
    """Namespaces are noticed through one of their processes, and read
    through it once they have TCP sockets (lazily, item 1).  Where that
    process was short-lived (`ip netns exec`), the connection used to fail
    and fall back to /proc/DEAD-PID/net/tcp: every dump of the namespace
    failed ("is missing") until the 30 s refresh, and a leak there (the
    twin-namespace attack) was not reaped in time.  Found in CI."""
    from resreap.host.sockets import SocketTable
    from resreap.model import TCP_CLOSE_WAIT

    here = make_netns()
    table = SocketTable()
    short = subprocess.Popen(["ip", "netns", "exec", here, "sleep", "30"])
    try:
        ino = os.stat(f"/run/netns/{here}").st_ino
        deadline = time.monotonic() + 10
        while ino not in table.namespaces:
            assert time.monotonic() < deadline
            table.dump((TCP_CLOSE_WAIT,))
            time.sleep(0.05)
        assert table._pid[ino] == short.pid  # known through the short-lived one only
    finally:
        short.kill()
        short.wait()
    server = actors("leaky-server", "127.0.0.1", tag, netns=here)
    actors("clients", "127.0.0.1", server.port, 2, tag, netns=here).send("close", "CLOSED")
    try:
        found = [s for s in table.close_wait() if s.netns == ino]
        assert len(found) == 2 and table.kind == "sock_diag"
        assert table._pid[ino] != short.pid  # now through a live one
    finally:
        table.close()


def test_a_namespace_whose_last_process_left_costs_one_look(monkeypatch):
    """Until the 30 s refresh, a namespace whose last process had left was
    tried again by every lookup: a thread to enter it, a failure, for each
    socket looked up.  A test's namespaces left behind slowed trace under a
    flood (38,407 connections, 23,782 shown: found in CI).  Now the first
    failure looks for another process of it, finds none, and forgets it."""
    from resreap.host import netns as ns
    from resreap.host.sockets import SocketTable
    from resreap.model import TCP_CLOSE_WAIT, SockId

    table = SocketTable()
    holder = subprocess.Popen(["unshare", "-n", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                ino = os.stat(f"/proc/{holder.pid}/ns/net").st_ino
                if ino != os.stat("/proc/self/ns/net").st_ino:
                    break
            except FileNotFoundError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.01)
        while ino not in table.namespaces:
            assert time.monotonic() < deadline
            table.dump((TCP_CLOSE_WAIT,))
            time.sleep(0.05)
    finally:
        holder.kill()
        holder.wait()
    entered = []
    real = ns.netlink_socket_in
    monkeypatch.setattr(ns, "netlink_socket_in",
                        lambda pid, *a, **k: entered.append(pid) or real(pid, *a, **k))
    nowhere = SockId(4, bytes([127, 0, 0, 1]), 1, bytes([127, 0, 0, 1]), 2)
    try:
        for _ in range(100):
            table.lookup(nowhere, retry_new_namespaces=False)
        assert ino not in table.namespaces
        assert entered.count(holder.pid) <= 1, entered  # other tests' namespaces aside
    finally:
        table.close()


# -- #23: a ConfigMap's directory is 0777, mounted read-only ----------------


def test_a_world_writable_config_directory_is_refused_unless_mounted_read_only(
        resreap_bin, tmp_path, tag):
    """Kubernetes mounts a ConfigMap as a 0777 directory, read-only in the
    container: nothing can be written through it, so it is trusted; the
    same directory writable is refused (anyone could swap the file and
    its hook would run as root)."""
    conf_dir = tmp_path / "configmap"
    conf_dir.mkdir()
    (conf_dir / "resreap.toml").write_text(f'filter = "{tag[4:]}"\ndry_run = true\n')
    os.chmod(conf_dir, 0o777)
    conf = str(conf_dir / "resreap.toml")
    refused = subprocess.run([resreap_bin, "watch", "--config", conf], capture_output=True,
                             text=True, timeout=patience(30))
    assert refused.returncode == 2
    assert "writable by group or others" in refused.stderr and refused.stderr.count("\n") == 1
    read_only = (f"mount --bind {conf_dir} {conf_dir} && "
                 f"mount -o remount,bind,ro {conf_dir} && exec \"$@\"")
    run = WatchRun(resreap_bin, "--config", conf,
                   wrap=("unshare", "-m", "--propagation", "private", "sh", "-c", read_only, "sh"))
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["dry_run"] is True and start["filter"] == tag[4:]
    finally:
        assert run.stop() == 0
