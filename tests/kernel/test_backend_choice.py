"""--backend auto: BPF where it works (the prebuilt CO-RE program, else bcc
compiling the same source), else polling, with a one-line reason.  Also:
resreap runs (and reaps) on a host with no compiler at all: no bcc, no
LLVM, no clang, no kernel headers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from procs import patience
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]


@pytest.fixture
def hidden_bcc(tmp_path):
    """An environment in which `import bcc` fails, as on a host without it."""
    fake = tmp_path / "hide" / "bcc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    return dict(os.environ, PYTHONPATH=str(fake.parent))


def private_mounts(script: str, argv: list[str]) -> list[str]:
    """argv in a private mount namespace, after ``script`` (sh)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{script} && exec \"$@\"",
            "sh", *argv]


def no_btf(argv: list[str]) -> list[str]:
    """Run argv where the kernel seems to have no BTF (the CO-RE object
    cannot load: bcc's turn)."""
    return private_mounts("mount -t tmpfs none /sys/kernel/btf", argv)


def old_kernel(argv: list[str]) -> list[str]:
    """Run argv where uname says 2.6 (setarch --uname-2.6): before 5.8."""
    return ["setarch", os.uname().machine, "--uname-2.6", *argv]


def no_tracepoint(argv: list[str]) -> list[str]:
    """Run argv in a private mount namespace whose tracefs has no events."""
    return private_mounts("mount -t tmpfs none /sys/kernel/debug && mount -t tmpfs none "
                          "/sys/kernel/tracing && mkdir /sys/kernel/tracing/events", argv)


def no_headers(argv: list[str]) -> list[str]:
    """Run argv in a private mount namespace without /lib/modules/RELEASE."""
    return private_mounts(f"mount -t tmpfs none /lib/modules/{os.uname().release}", argv)


def not_permitted(argv: list[str]) -> list[str]:
    """Root, but without the capabilities that loading BPF needs."""
    return ["setpriv", "--bounding-set=-bpf,-sys_admin,-perfmon",
            "--inh-caps=-bpf,-sys_admin,-perfmon", *argv]


def same(argv: list[str]) -> list[str]:
    return argv


# case: (wrap, hide bcc?, RESREAP_BPF_LOADER, what the one line says)
CASES = {
    "no BTF, no bcc": (no_btf, True, None, "bcc is not importable"),
    "no BTF, no bcc: both reasons": (no_btf, True, None, "no BTF"),
    "old kernel": (old_kernel, False, None, "older than 5.8"),
    "bcc forced, no bcc": (same, True, "bcc", "bcc is not importable"),
    "no tracepoint": (no_tracepoint, False, None, "no sock:inet_sock_set_state tracepoint"),
    "not permitted": (not_permitted, False, None, "not permitted to load BPF"),
    "bcc forced, no headers": (no_headers, False, "bcc", "no kernel headers"),
}


def case_env(hidden: dict, hide: bool, loader: str | None) -> dict:
    env = dict(hidden if hide else os.environ)
    if loader:
        env["RESREAP_BPF_LOADER"] = loader
    return env


@pytest.mark.parametrize("case", CASES)
def test_auto_falls_back_with_one_line_reason(resreap_bin, hidden_bcc, case):
    wrap, hide, loader, reason = CASES[case]
    env = case_env(hidden_bcc, hide, loader)
    proc = subprocess.Popen(wrap([resreap_bin, "trace"]), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        second = proc.stderr.readline()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=patience(15))
    assert reason in first and "polling" in first and first.count("\n") == 1
    assert "proc backend" in second and "Ctrl-C to end" in second
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize("case", CASES)
def test_forced_bpf_fails_with_one_line_reason(resreap_bin, hidden_bcc, case):
    wrap, hide, loader, reason = CASES[case]
    run = subprocess.run(wrap([resreap_bin, "trace", "--backend", "bpf"]),
                         env=case_env(hidden_bcc, hide, loader), capture_output=True, text=True,
                         timeout=patience(60))
    assert run.returncode == 1
    assert reason in run.stderr and "--backend proc" in run.stderr
    assert run.stderr.count("\n") == 1


def test_watch_without_bpf_still_reaps_by_polling(resreap_bin, hidden_bcc, actors):
    """No BTF and no bcc: BPF is expected but cannot run; the start line
    says so, and the poller reaps."""
    tag = f"tag=rr{uuid.uuid4().hex[:10]}"
    server = actors("leaky-server", "127.0.0.1", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = WatchRun(resreap_bin, "-f", tag[4:], "-i", "0.5", "-w", "0.5", env=hidden_bcc,
                   wrap=tuple(no_btf([])))
    try:
        backend = run.wait_for(lambda e: e["event"] == Event.BACKEND)
        assert "bcc is not importable" in backend["reason"] and "no BTF" in backend["reason"]
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["backend"] == "proc" and "no BTF" in start["bpf_unavailable"]
        client.send("close", "CLOSED")
        assert run.outcome(server.pid)["result"] == "terminated"
        assert client.alive()
    finally:
        assert run.stop() == 0


# What a compiler-free host lacks: bcc's Python module and library, LLVM and
# clang, the kernel headers and /usr/src.  Each is hidden (an empty tmpfs
# over a directory, /dev/null over a file) in a private mount namespace.
def no_compiler(argv: list[str]) -> list[str]:
    import glob

    dirs = ["/usr/src", "/lib/modules", *glob.glob("/usr/lib/llvm-*")]
    files = [f for pattern in ("/usr/bin/clang*", "/usr/bin/llc*", "/usr/lib/*/libbcc*",
                               "/usr/lib/*/libLLVM*", "/usr/lib/*/libclang*")
             for f in glob.glob(pattern) if os.path.isfile(f) and not os.path.islink(f)]
    # Files first: a symlink into a hidden directory is left dangling.
    steps = [*(f"mount --bind /dev/null {f}" for f in files),
             *(f"mount -t tmpfs none {d}" for d in dirs)]
    # An empty directory would import as a namespace package: bcc's is
    # replaced by one that refuses.
    for bcc in glob.glob("/usr/lib/python3/dist-packages/bcc"):
        steps += [f"mount -t tmpfs none {bcc}",
                  f"echo \"raise ImportError('hidden by the test')\" > {bcc}/__init__.py"]
    script = " && ".join([*steps, "true"])
    return private_mounts(script, argv)


def test_no_compiler_on_the_host_watch_reaps_with_the_prebuilt_program(resreap_bin, actors,
                                                                      tag):
    """#22: with bcc, LLVM, clang, the headers and /usr/src all hidden,
    `watch --backend bpf` starts on the prebuilt program and reaps a real
    leak (the hiding itself is checked: bcc cannot be imported there)."""
    probe = subprocess.run(no_compiler([sys.executable, "-c", "import bcc"]), capture_output=True)
    assert probe.returncode != 0
    assert subprocess.run([sys.executable, "-c", "import bcc"]).returncode == 0  # here it is
    clang = subprocess.run(no_compiler(["sh", "-c", "command -v clang-14 && clang-14 --version"]),
                           capture_output=True)
    assert clang.returncode != 0
    server = actors("leaky-server", "127.0.0.1", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = WatchRun(resreap_bin, "--backend", "bpf", "-f", tag[4:], "-i", "0.5", "-w", "0.5",
                   wrap=tuple(no_compiler([])))
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["backend"] == "bpf" and start["loader"] == "core"
        client.send("close", "CLOSED")
        assert run.outcome(server.pid)["result"] == "terminated"
        assert client.alive()
    finally:
        assert run.stop() == 0


def test_bcc_still_loads_the_same_program_and_reaps(resreap_bin, actors, tag):
    """The fallback stays working: bcc forced compiles bpf/resreap.bpf.c
    (its record layout checked against the header's), says why, and reaps."""
    server = actors("leaky-server", "127.0.0.1", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = WatchRun(resreap_bin, "--backend", "bpf", "-f", tag[4:], "-i", "0.5", "-w", "0.5",
                   env=dict(os.environ, RESREAP_BPF_LOADER="bcc"))
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["loader"] == "bcc" and start["loader_why"] == "RESREAP_BPF_LOADER=bcc"
        assert start["first_pass"] is True
        client.send("close", "CLOSED")
        assert run.outcome(server.pid)["result"] == "terminated"
    finally:
        assert run.stop() == 0


def test_bcc_takes_over_where_the_prebuilt_program_cannot_load(resreap_bin):
    """No BTF: bcc compiles instead, and the start line says why."""
    tag = f"rr{uuid.uuid4().hex[:10]}"
    run = WatchRun(resreap_bin, "-f", tag, "-d", wrap=tuple(no_btf([])))
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["backend"] == "bpf" and start["loader"] == "bcc"
        assert "no BTF" in start["loader_why"]
    finally:
        assert run.stop() == 0


def test_a_broken_prebuilt_object_falls_back_to_bcc_and_says_why(tmp_path, monkeypatch,
                                                                  bpf_ready):
    """An object that does not load (here: not ELF at all) is never fatal
    while bcc can compile the same program; the reason is kept."""
    from resreap.sources import bpf_events

    from resreap.sources.program import BPF_DIR

    broken = tmp_path / "resreap.bpf.o"
    broken.write_bytes(b"not an object")
    (tmp_path / "resreap.h").write_text((BPF_DIR / "resreap.h").read_text())
    monkeypatch.setattr(bpf_events, "OBJECT", broken)
    loaded = bpf_events.load(0, 16)
    try:
        assert loaded.loader == "bcc" and "not a proper ELF object" in loaded.why
    finally:
        for fd in loaded.fds:
            os.close(fd)
