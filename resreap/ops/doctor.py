"""`resreap doctor`: what this host offers resreap, one check per line,
each with the fix when it fails."""

from __future__ import annotations

import gzip
import os
import platform
import subprocess
from typing import NamedTuple

OK, WARN, FAIL = "OK", "WARN", "FAIL"


class Check(NamedTuple):
    name: str
    status: str
    detail: str
    fix: str = ""
    # Without it resreap cannot run at all (either backend): it decides
    # doctor's exit code.  The rest only choose between the backends.
    required: bool = False


def can_run(results: list[Check]) -> bool:
    """resreap can run here: no required check failed."""
    return all(c.status != FAIL for c in results if c.required)


def _kernel_config() -> dict[str, str]:
    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                return dict(line.strip().split("=", 1) for line in f
                            if line.startswith("CONFIG_") and "=" in line)
        except OSError:
            continue
    return {}


def _other_fds() -> Check:
    """Owners come from other processes' /proc/PID/fd: hidepid=2 or a
    missing CAP_SYS_PTRACE leaves every socket without an owner."""
    from resreap.errors import AccessDenied
    from resreap.host.procinfo import HOST

    me = os.getpid()
    others = [p for p in (1, os.getppid()) if p != me]
    for pid in others:
        try:
            list(HOST.socket_fds(pid))
        except AccessDenied:
            return Check("process fds", FAIL, f"cannot read /proc/{pid}/fd",
                         "run as root with CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH "
                         "(hidepid=2 needs them)")
    return Check("process fds", OK, "other processes' /proc/PID/fd readable")


def _supervisor() -> Check:
    """Who brings a reaped process back here (--restart-units)."""
    from resreap.host import systemd

    if not systemd.booted():
        return Check("supervisor", OK, "no systemd: their own supervisors restart them")
    try:
        version = subprocess.run([systemd.SYSTEMCTL, "--version"], capture_output=True,
                                 text=True, timeout=5).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    if not version:
        return Check("supervisor", WARN, "systemd is init but systemctl does not answer",
                     "reaped services that stay down will not be started again")
    return Check("supervisor", OK, f"{version.split('(')[0].strip()}: services left down "
                 "are started again")


def _older(version: str, than: tuple[int, ...]) -> bool:
    """'0.26.0' older than (0, 30)?  An unparsable version is not."""
    try:
        parts = tuple(int(p) for p in version.split("+")[0].split("-")[0].split(".")[:len(than)])
    except ValueError:
        return False
    return parts < than


def checks() -> list[Check]:
    """Every check, in the order doctor prints them."""
    root = os.geteuid() == 0
    out = [Check("root", OK if root else FAIL, f"euid {os.geteuid()}",
                 "" if root else "run as root: sudo resreap ...", required=True)]
    out += _kernel_checks()
    out += _bpf_checks()
    out += _host_checks()
    out.append(_backend_check(root))
    return out


def _kernel_checks() -> list[Check]:
    """The kernel's version and build options."""
    from resreap.sources.program import too_old

    out = []
    old = too_old()
    out.append(Check("kernel", WARN if old else OK, platform.release(),
                     f"{old}; BPF needs Linux 5.8+" if old else ""))
    config = _kernel_config()
    if config:
        missing = [k for k in ("CONFIG_BPF_SYSCALL", "CONFIG_BPF_EVENTS", "CONFIG_INET_DIAG")
                   if config.get(k) not in ("y", "m")]
        out.append(Check("kernel config", OK if not missing else WARN,
                         "BPF syscall, BPF events, inet_diag" if not missing
                         else "missing: " + ", ".join(missing),
                         "" if not missing else "a kernel built with them; polling works"))
    else:
        out.append(Check("kernel config", WARN, "no /proc/config.gz or /boot/config-*",
                         "cannot tell; the checks below try the features directly"))
    return out


def _bpf_checks() -> list[Check]:
    """What loading the BPF program needs: tracefs and the tracepoint; BTF,
    the prebuilt object and libbpf (CO-RE, the default); else bcc and the
    kernel headers (compiled at start)."""
    from resreap.sources import bpf_events

    out = []
    tracefs = bpf_events.mounted_tracefs()
    out.append(Check("tracefs", OK if tracefs else FAIL, tracefs[0] if tracefs else "not mounted",
                     "" if tracefs else "mount -t tracefs tracefs /sys/kernel/tracing"))
    tp = bpf_events.has_tracepoint(tracefs)
    out.append(Check("tracepoint", OK if tp else FAIL, "sock:inet_sock_set_state",
                     "" if tp else "needs Linux 4.16+ (and tracefs); use --backend proc"))
    out += _core_checks()
    out += _bcc_checks(core=out[-1].status == OK)
    return out


def _core_checks() -> list[Check]:
    """The prebuilt (CO-RE) program: BTF, the object, libbpf."""
    from resreap.sources import core_loader
    from resreap.sources.program import OBJECT

    btf = os.path.exists(core_loader.VMLINUX_BTF)
    have = OBJECT.is_file()
    why = core_loader.unusable(OBJECT)
    return [
        Check("BTF", OK if btf else WARN, core_loader.VMLINUX_BTF if btf else "absent",
              "" if btf else "a kernel built with CONFIG_DEBUG_INFO_BTF; bcc compiles instead"),
        Check("program", OK if have else WARN, str(OBJECT) if have else "no prebuilt object",
              "" if have else "build it (scripts/build-bpf) or install the package"),
        Check("CO-RE", WARN if why else OK,
              why or "the prebuilt program can be loaded by libbpf (no compiler needed)",
              "bcc compiles the same program at start instead (see bcc, headers)" if why else ""),
    ]


def _bcc_checks(core: bool) -> list[Check]:
    """bcc and the headers: the fallback; not needed where CO-RE works."""
    from resreap.sources import bpf_events
    from resreap.sources.bpf_loader import CHILD_CWD, child_python

    out = []
    bad = WARN if core else FAIL
    probe = subprocess.run(child_python("-c", "import bcc; print(bcc.__version__)"),
                           cwd=CHILD_CWD, capture_output=True, text=True)
    bcc = probe.returncode == 0
    version = probe.stdout.strip() if bcc else ""
    out.append(Check("bcc", OK if bcc or core else FAIL,
                     f"importable ({version})" if bcc else
                     "not installed (not needed: the prebuilt program loads)" if core
                     else "not importable",
                     "" if bcc or core else
                     "apt-get install python3-bpfcc; venv with --system-site-packages"))
    if bcc and _older(version, (0, 30)):
        # CVE-2024-2314: kheaders under a $TMPDIR anyone may plant in.
        out.append(Check("bcc-cve", WARN, f"bcc {version} has CVE-2024-2314 (headers taken "
                         "from $TMPDIR/kheaders-RELEASE, whoever made it)",
                         "resreap's loader has a private TMPDIR; for other bcc tools, "
                         "upgrade bcc to 0.30+"))
    headers = bpf_events.kernel_headers()
    if headers or core:
        out.append(Check("headers", OK, headers or "none (not needed: the prebuilt program loads)"))
    else:
        out.append(Check("headers", bad, f"/lib/modules/{platform.release()}/build missing",
                         f"apt-get install linux-headers-{platform.release()} "
                         "(or scripts/setup links generic ones)"))
    return out


def _pods(cgroup_root: str = "/sys/fs/cgroup", dirs=None) -> Check:
    """On a Kubernetes node (the kubelet's kubepods cgroup), can pods be
    named: are the runtime's records there to read (host/pods)?"""
    import glob

    from resreap.host import pods

    kubepods = glob.glob(f"{cgroup_root}/kubepods*") + glob.glob(f"{cgroup_root}/*/kubepods*")
    if not kubepods:
        return Check("pods", OK, "not a Kubernetes node (no kubepods cgroup)")
    found = []
    for base in dirs if dirs is not None else pods.DEFAULT_DIRS:
        for layout in ("io.containerd.runtime.v2.task/k8s.io", "overlay-containers"):
            try:
                found.append(f"{len(os.listdir(os.path.join(base, layout)))} under "
                             f"{os.path.join(base, layout)}")
            except OSError:
                continue
    if not found:
        return Check("pods", WARN, "a Kubernetes node, but no container runtime's records are "
                     "readable: pods are named by their UID and container id only",
                     "mount /run/containerd/io.containerd.runtime.v2.task (or CRI-O's "
                     "/run/containers/storage/overlay-containers) read-only, as the DaemonSet "
                     "does, or give --runtime-dir")
    return Check("pods", OK, "pods named from the runtime's records: containers " +
                 ", ".join(found))


def _host_checks() -> list[Check]:
    """sock_diag, other processes' fds, pidfds, the supervisor."""
    from resreap.errors import ResreapError
    from resreap.host.sockets import SocketTable

    out = []
    try:
        table = SocketTable(mode="sock_diag")
        table.close_wait()
        out.append(Check("sock_diag", OK, f"{len(table.namespaces)} network namespace(s)"))
        table.close()
    except (ResreapError, OSError) as exc:
        out.append(Check("sock_diag", WARN, str(exc), "/proc/net/tcp is read instead (slower)"))
    out.append(_other_fds())
    pidfd = hasattr(os, "pidfd_open")
    if pidfd:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except OSError:
            pidfd = False
    out.append(Check("pidfd", OK if pidfd else WARN, "pidfd_open works" if pidfd else "unavailable",
                     "" if pidfd else "Linux 5.3+; without it pid+start time are re-checked"))
    out.append(_supervisor())
    out.append(_pods())
    return out


def _backend_check(root: bool) -> Check:
    """What auto would pick, by trying to load the program."""
    from resreap.errors import ResreapError
    from resreap.host.sockets import SocketTable
    from resreap.sources import bpf_events

    if not root:
        return Check("backend", FAIL, "not root: neither backend can read /proc/PID/fd",
                     "run as root")
    try:
        source = bpf_events.BpfSource(SocketTable(), latency=0.1)
        source.close()
    except ResreapError as exc:
        return Check("backend", WARN, f"BPF expected, but auto would poll (proc): {exc}",
                     "fix the WARN and FAIL lines above for BPF")
    if source.loader == "core":
        return Check("backend", OK, "auto would use bpf, loader core: the prebuilt program "
                     "loads and attaches")
    return Check("backend", OK, "auto would use bpf, loader bcc: bcc compiles the program at "
                 f"start, and it attaches (not the prebuilt one: {source.loader_why})")
