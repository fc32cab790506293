"""The errors resreap's domain code raises; only the CLI turns them into text."""


class ResreapError(Exception):
    """Base of every error resreap reports to the user as one line."""

    exit_code = 1


class UsageError(ResreapError):
    """A bad option value: the user must change the command line."""

    exit_code = 2


class NotRoot(ResreapError):
    """The operation needs root (or CAP_BPF/CAP_NET_ADMIN/CAP_SYS_PTRACE)."""


class AlreadyRunning(ResreapError):
    """Another `resreap watch` holds the host's lock."""


class ReloadFailed(ResreapError):
    """A reload was rejected, or not answered."""


class OutputGone(ResreapError):
    """Nowhere left to log (stderr is a closed pipe, no --log-file)."""


class BackendUnavailable(ResreapError):
    """The chosen event source cannot run here; the message says why and
    what to install or do."""


class KernelQueryError(ResreapError):
    """A netlink sock_diag request failed."""


class BpfCallError(KernelQueryError):
    """A bpf() call on one of our maps failed: the ring's counters, the
    pending map.  Translated at that edge so that nothing above reads a raw
    OSError, nor a failure as "nothing happened"."""

    def __init__(self, what: str, errno: int, strerror: str) -> None:
        super().__init__(f"bpf() {what} failed: {strerror}")
        self.errno = errno


class NamespaceGone(KernelQueryError):
    """The process through which a network namespace was reached has left
    (its /proc/PID is gone).  Not a reason to think sock_diag is missing:
    another process of the namespace may serve."""


class OutOfFds(ResreapError):
    """resreap itself hit its fd limit (EMFILE) or the system's (ENFILE).
    Never read as "the process is gone": what could not be read is unknown,
    and nothing is decided on it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"out of file descriptors while {what}: raise LimitNOFILE "
                         "(the unit sets 16384) or find what holds them (ls /proc/PID/fd)")


class ProcessGone(ResreapError):
    """The process exited or its pid now names another process.  A normal
    outcome for a watchdog, never a crash."""

    def __init__(self, pid: int, why: str = "exited") -> None:
        super().__init__(f"pid {pid} {why}")
        self.pid = pid


class AccessDenied(ResreapError):
    """/proc/PID could not be read for lack of privilege (hidepid=2, or
    running without CAP_SYS_PTRACE): the process cannot be judged."""

    def __init__(self, pid: int, what: str = "") -> None:
        super().__init__(f"pid {pid}: permission denied reading /proc/{pid}{what}")
        self.pid = pid


class ProcessReplaced(ProcessGone):
    """The pid now names another process (another start time)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid, "was replaced by another process")


class ProcessUnreadable(ResreapError):
    """/proc/PID could not be read in time (a process stuck in D state holds
    its mmap lock).  The process is looked at again later."""

    def __init__(self, pid: int, timeout: float) -> None:
        super().__init__(f"pid {pid}: /proc read took over {timeout:g}s (D state?)")
        self.pid = pid
