"""The command line: the typer app and nothing else.  Domain modules raise
ResreapError; only this module prints and chooses exit codes."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, NoReturn, Optional

import typer

from resreap import __version__
from resreap.errors import ResreapError
from resreap.ops.escaping import safe

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="resreap",
    help="Find processes that leak TCP sockets in CLOSE_WAIT, and reap them.",
    context_settings=CONTEXT,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    # It runs as root: never dump locals (environment, buffers) in a traceback.
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"resreap {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[Optional[bool], typer.Option(
    "--version", "-v", callback=_version, is_eager=True, help="Show the version and exit.")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="Event source: auto (BPF, else polling), bpf, or proc (polling).")]
PatternOpt = Annotated[Optional[str], typer.Option(
    "--filter", "-f", metavar="PAT",
    help="Only processes whose command line matches the regex PAT (re.search).")]
IgnoreOpt = Annotated[Optional[list[str]], typer.Option(
    "--ignore", "-F", metavar="HOST:PORT",
    help="Ignore sockets whose foreign endpoint matches: 127.0.0.1:2049, "
         "[::1]:80, 10.0.0.0/8:*, *:6379.  Repeatable.")]
PidOpt = Annotated[Optional[list[int]], typer.Option(
    "--pid", "-p", metavar="PID", help="Only these processes.  Repeatable.")]
UnitOpt = Annotated[Optional[str], typer.Option(
    "--unit", metavar="GLOB",
    help="Only processes of the system units matching GLOB (nginx.service, "
         "'backend*.service'), from the cgroup root made; a user's own units never match.")]
ContainerOpt = Annotated[Optional[str], typer.Option(
    "--container", metavar="ID",
    help="Only processes of this container: 4+ hex digits of its id, or a machine name.")]
NamespaceOpt = Annotated[Optional[str], typer.Option(
    "--namespace", metavar="GLOB",
    help="Only processes in pods of the Kubernetes namespaces matching GLOB (shop, "
         "'team-*'), as the container runtime's records name them.")]
PodOpt = Annotated[Optional[str], typer.Option(
    "--pod", metavar="GLOB",
    help="Only processes in the pods whose name matches GLOB ('checkout-*').")]
RuntimeDirOpt = Annotated[Optional[list[str]], typer.Option(
    "--runtime-dir", metavar="DIR",
    help="Read pods' names from the container runtime's state under DIR instead of "
         "/run/containerd, /run/k3s/containerd and /run/containers/storage.  Repeatable.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
DebugOpt = Annotated[bool, typer.Option("--debug", "-D", help="Log every event and decision.")]


@app.callback()
def _root(version: VersionOpt = None) -> None:
    """Find processes that leak TCP sockets in CLOSE_WAIT, and reap them."""


def fail(exc: ResreapError) -> NoReturn:
    # An error may name a process or a path others chose: escaped (ops.formatting).
    typer.echo(f"resreap: error: {safe(str(exc))}", err=True)
    raise typer.Exit(exc.exit_code)


class _SafeFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("resreap: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])


def _print(line: str) -> None:
    """``line`` and its newline, all of it: written straight to fd 1 until
    every byte is out.  print() wrote the line and the newline apart (a
    Ctrl-C between the two left trace's summary on the same line as its
    last event), and a Ctrl-C into a write blocked on a full pipe lost the
    rest of a batch inside the io stack: lines cut in the middle (in CI)."""
    try:
        sys.stdout.flush()  # anything written through the io stack first
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # not a file (embedded, captured)
            sys.stdout.write(line + "\n")
            return
        data = memoryview((line + "\n").encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(fd, data):]
    except BrokenPipeError:  # `resreap trace | head`
        raise KeyboardInterrupt from None


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  resreap trace                      every CLOSE_WAIT transition, live
  resreap trace -i 5                 STAYED lines (with evidence) after 5s, not 2s
  resreap trace --min-age 10         only sockets that stayed 10s (busy hosts)
  resreap trace -f '^java'           only processes whose command starts with java
  resreap trace --unit 'nginx*.service'
                                     only the processes of those system units
  resreap trace --container 3f2a9c1b only that container's processes
  resreap trace --namespace shop --pod 'checkout-*'
                                     only those pods' processes (Kubernetes)
  resreap trace -F 127.0.0.1:2049 -F '[::1]:*'
                                     ignore these foreign endpoints
  resreap trace --json | jq .        JSON lines (fields: docs/observing.md)
  resreap trace --summary 500        per-process lines each second above 500 transitions/s
  resreap trace --backend proc       poll sock_diag instead of BPF
""")
def trace(
    command_pattern: PatternOpt = None,
    grace: Annotated[float, typer.Option(
        "--grace", "-i", metavar="SEC",
        help="Show a STAYED line, with the kernel's evidence, for each socket still in "
             "CLOSE_WAIT after SEC.")] = 2.0,
    min_age: Annotated[Optional[float], typer.Option(
        "--min-age", metavar="SEC",
        help="Only sockets that stayed in CLOSE_WAIT at least SEC: their STAYED line (at "
             "SEC) and their EXIT; no ENTER lines, no short-lived sockets.")] = None,
    ignore: IgnoreOpt = None,
    pid: PidOpt = None,
    unit: UnitOpt = None,
    container: ContainerOpt = None,
    namespace: NamespaceOpt = None,
    pod: PodOpt = None,
    runtime_dir: RuntimeDirOpt = None,
    summary: Annotated[Optional[float], typer.Option(
        "--summary", metavar="RATE",
        help="Above RATE transitions a second, one SUMMARY line per process per second "
             "instead of ENTER and EXIT lines (STAYED lines stay); every line again under "
             "half of it.  Default: 2000 on a terminal, 0 (every line, always) otherwise.")] = None,
    json_out: JsonOpt = False,
    backend: BackendOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    """Show TCP sockets entering and leaving CLOSE_WAIT, with their owners.

    Each line: time, EVENT (EXISTING at start, ENTER, EXIT, and STAYED for
    a socket still in CLOSE_WAIT after -i), the owning PID and COMM (the
    process holding the socket, found from the socket itself), local ->
    remote, on EXIT and STAYED the time in CLOSE_WAIT, and on STAYED the
    evidence watch would judge (eof-ignored, unread, queued, sending).
    Ctrl-C prints a per-process summary and exits 0.
    """
    from resreap.ops import settings, tracing

    _setup_logging(debug)
    try:
        if sys.stdout is None:  # started with fd 1 closed: every line would vanish
            from resreap.errors import UsageError

            raise UsageError("stdout is closed: nowhere to print (redirect it, e.g. > trace.log)")
        st = settings.resolve_trace(command_pattern, ignore or (), pid or (), grace, min_age,
                                    json_out, backend, unit, container, namespace, pod,
                                    runtime_dir, _summary_default(summary, min_age))
        tracing.run(st, _print, lambda line: typer.echo(line, err=True))
    except ResreapError as exc:
        fail(exc)


# A person reads a few lines a second; past this, trace on a terminal sums.
SUMMARY_ON_A_TERMINAL = 2000.0


def _summary_default(summary: float | None, min_age: float | None) -> float:
    """--summary as given, else on a terminal (without --min-age, which
    already shows only what stays) SUMMARY_ON_A_TERMINAL, else 0: a file or
    a program reads every line."""
    if summary is not None:
        return summary
    return SUMMARY_ON_A_TERMINAL if min_age is None and sys.stdout.isatty() else 0.0


LimitOpt = Annotated[int, typer.Option(
    "--limit", "-l", metavar="N",
    help="Reap a process holding at least N counting sockets (distinct sockets, not fds).")]
GraceOpt = Annotated[float, typer.Option(
    "--grace", "-i", metavar="SEC",
    help="A socket whose EOF its process read and ignored counts once it has been in "
         "CLOSE_WAIT this long (the original's interval between its two snapshots).")]
StallOpt = Annotated[float, typer.Option(
    "--stall", metavar="SEC",
    help="A socket left unread (FIN not read) or never accepted counts only after this "
         "long (at least -i): a busy server looks the same for a while.  Sockets still "
         "sending never count.")]
FdPercentOpt = Annotated[Optional[float], typer.Option(
    "--fd-percent", metavar="P",
    help="Also require the counting sockets to reach P% of the process's soft "
         "RLIMIT_NOFILE (the fd exhaustion that takes a server down).")]
ActBeforeOpt = Annotated[Optional[float], typer.Option(
    "--act-before", metavar="SEC",
    help="Also reap a process, below -l, once its fds are forecast to run out within SEC "
         "seconds at the pace its counting sockets grow (it needs one counting socket: "
         "the evidence decides who, the forecast when).")]
HookOpt = Annotated[Optional[str], typer.Option(
    "--hook", "-c", metavar="CMD",
    help="Run CMD with /bin/sh before any signal; non-zero exit spares the process this "
         "round.  Facts arrive as RESREAP_PID, RESREAP_COMM, RESREAP_CMDLINE, "
         "RESREAP_COUNT, RESREAP_SOCKETS, RESREAP_OLDEST, RESREAP_SIGNAL, RESREAP_RULE, "
         "RESREAP_REASON, RESREAP_EXHAUSTED_IN.")]
SignalOpt = Annotated[str, typer.Option(
    "--signal", "-s", metavar="SIG", help="Signal to send (name or number).")]
FirstSignalOpt = Annotated[Optional[str], typer.Option(
    "--first-signal", "-S", metavar="SIG",
    help="A signal sent before -s, e.g. QUIT so that a JVM prints its stacks.")]
WaitOpt = Annotated[float, typer.Option(
    "--wait", "-w", metavar="SEC", help="Wait after each signal before the next and SIGKILL.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-d", help="Log what would be done; kill nothing.")]
RestartUnitOpt = Annotated[Optional[list[str]], typer.Option(
    "--restart-unit", metavar="UNIT",
    help="Also start UNIT again after a kill although its Restart= would not have "
         "(Restart=no); never a oneshot.  Repeatable.")]
RestartUnitsOpt = Annotated[bool, typer.Option(
    "--restart-units/--no-restart-units",
    help="After a kill, start the process's systemd service again if it stayed down "
         "(Restart=on-failure does not restart a clean exit on SIGTERM); one that systemd "
         "restarts itself is left alone.")]
LogFileOpt = Annotated[Optional[str], typer.Option(
    "--log-file", metavar="PATH", help="Also log to PATH (reopened after logrotate or SIGHUP).")]
HookTimeoutOpt = Annotated[float, typer.Option(
    "--hook-timeout", metavar="SEC", help="Cut off a hook that runs longer (the process is spared).")]
MaxRateOpt = Annotated[str, typer.Option(
    "--max-rate", metavar="N/SEC",
    help="Reap one supervised command (rule, uids, unit or container, command line) at "
         "most N times per SEC seconds; past that, kills wait and a warning says so.")]
PollOpt = Annotated[Optional[float], typer.Option(
    "--poll-interval", metavar="SEC",
    help="Polling backend only: seconds between polls (default: half of -i; detection is at most one interval late).")]


ConfigOpt = Annotated[Optional[str], typer.Option(
    "--config", metavar="PATH",
    help="Settings file (TOML); default /etc/resreap/resreap.toml when it exists.  "
         "Flags override it; SIGHUP reloads it.")]
KillOpt = Annotated[str, typer.Option(
    "--kill", metavar="WHOM",
    help="process: signal the process (the default); container: in a Kubernetes pod, "
         "signal its container's main process, so that the whole container is restarted "
         "(outside a pod, the process).")]
MetricsOpt = Annotated[Optional[str], typer.Option(
    "--metrics", metavar="ADDR:PORT",
    help="Serve Prometheus metrics (/metrics) and a liveness check (/healthz) there, "
         "e.g. 127.0.0.1:9469 (a bare port binds loopback).  Metrics name processes: "
         "keep it off untrusted networks.")]


def _watch_defaults() -> dict:
    """Every `watch` setting at its default, by parameter name: what `top`
    and `rules` resolve their flags and the config file over."""
    params = typer.main.get_command(app).commands["watch"].params
    return {p.name: p.default for p in params if p.name not in ("config_file", "version")}


def _from_flags(ctx: typer.Context) -> set[str]:
    """The parameters the user typed (not defaults): they win over the file."""
    typed = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            typed.add(name)
    return typed


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  resreap watch                      reap holders of >= 2 leaked sockets (EOF ignored 2s,
                                     or unread / never accepted 60s)
  resreap watch --stall 300          give busy servers 5 minutes before unread counts
  resreap watch --fd-percent 50      only once the leak is half the process's fd limit
  resreap watch --act-before 600     also reap a leak that will run out of fds within
                                     10 minutes at its pace, even below -l
  resreap watch -l 2 -f ^java        only Java processes
  resreap watch --unit nginx.service only nginx's service (a user's units never match)
  resreap watch --container 3f2a9c1b only that container's processes
  resreap watch --namespace shop     only the pods of the shop namespace (Kubernetes)
  resreap watch --kill container     in a pod, restart the leaking process's whole container
  resreap watch --config rules.toml  a policy per service: [[rule]] sections (docs/rules.md)
  resreap watch -F 127.0.0.1:2049    ignore sockets whose peer is 127.0.0.1:2049
  resreap watch -d -D                dry run with every event and timer logged
  resreap watch -S QUIT -s TERM -w 5 stacks first, then TERM, SIGKILL after 5s
  resreap watch --no-restart-units   never start a reaped process's systemd service
  resreap watch --restart-unit legacy.service
                                     start it again after a kill although Restart=no
  resreap watch -c 'logger -t resreap "reaping $RESREAP_PID ($RESREAP_COUNT)"'
  resreap watch --json --log-file /var/log/resreap.log
  resreap watch --config /etc/resreap/resreap.toml --metrics 127.0.0.1:9469
""")
def watch(
    ctx: typer.Context,
    command_pattern: PatternOpt = None,
    ignore: IgnoreOpt = None,
    pid: PidOpt = None,
    unit: UnitOpt = None,
    container: ContainerOpt = None,
    namespace: NamespaceOpt = None,
    pod: PodOpt = None,
    limit: LimitOpt = 2,
    grace: GraceOpt = 2.0,
    stall: StallOpt = 60.0,
    fd_percent: FdPercentOpt = None,
    act_before: ActBeforeOpt = None,
    hook: HookOpt = None,
    sig: SignalOpt = "TERM",
    first_signal: FirstSignalOpt = None,
    wait: WaitOpt = 2.0,
    dry_run: DryRunOpt = False,
    restart_units: RestartUnitsOpt = True,
    restart_unit: RestartUnitOpt = None,
    kill: KillOpt = "process",
    runtime_dir: RuntimeDirOpt = None,
    debug: DebugOpt = False,
    backend: BackendOpt = "auto",
    log_file: LogFileOpt = None,
    json_out: JsonOpt = False,
    hook_timeout: HookTimeoutOpt = 10.0,
    max_rate: MaxRateOpt = "3/60",
    poll_interval: PollOpt = None,
    config_file: ConfigOpt = None,
    metrics: MetricsOpt = None,
    version: VersionOpt = None,
) -> None:
    """Kill processes that hold TCP sockets stuck in CLOSE_WAIT.

    What counts is evidence from the kernel, not age alone: a socket whose
    EOF the process read and ignored counts after the grace period (-i); one
    left unread or never accepted after --stall; one still sending never; one
    made by another user and passed in never counts against the receiver.
    A process holding at least -l counting sockets is reaped: the
    hook (-c) runs, then -S, -s, a wait of -w after each, and SIGKILL if it
    is still alive, all through pidfds so that a recycled pid is never hit.
    Its supervisor is expected to restart it.  Every decision is logged on
    one line (stderr, --log-file); --json makes them JSON lines.
    """
    from resreap.ops import daemon

    given = {k: v for k, v in locals().items() if k in ctx.params}
    try:
        code = daemon.run(given, _from_flags(ctx), config_file)
    except ResreapError as exc:
        fail(exc)
    raise typer.Exit(code)


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  sudo resreap top                   live: who is heading for a reap ([s]ort, [q]uit)
  sudo resreap top -l 5 --stall 300  as a watch with those settings would judge
  sudo resreap top --once            one frame, for scripts
  sudo resreap top --json            the same data as one JSON object
  sudo resreap top --sort churn      who passes sockets through CLOSE_WAIT fastest (IN/OUT)
  sudo resreap top --sort out        who runs out of fds soonest at its leak's pace (OUT)
  sudo resreap top --act-before 600  REAP as a watch that acts 10 minutes before EMFILE
""")
def top(
    ctx: typer.Context,
    command_pattern: PatternOpt = None,
    ignore: IgnoreOpt = None,
    pid: PidOpt = None,
    unit: UnitOpt = None,
    container: ContainerOpt = None,
    namespace: NamespaceOpt = None,
    pod: PodOpt = None,
    limit: LimitOpt = 2,
    grace: GraceOpt = 2.0,
    stall: StallOpt = 60.0,
    act_before: ActBeforeOpt = None,
    runtime_dir: RuntimeDirOpt = None,
    backend: BackendOpt = "auto",
    config_file: ConfigOpt = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print one frame as a JSON object and exit.")] = False,
    sort: Annotated[str, typer.Option(
        "--sort", metavar="KEY",
        help="reap-in, close-wait, counting, oldest, churn or out (out of fds "
             "soonest).")] = "reap-in",
) -> None:
    """Show the processes holding CLOSE_WAIT sockets, and when each would be
    reaped: its sockets now and those that count, their evidence, the
    oldest's age, its sockets in and out of CLOSE_WAIT per second, its fds
    against its limit and when they run out at its leak's pace, its memory;
    then the acting watch's last reaps.  It
    runs the watch's own event source and policy (settings from flags, then
    the config file), as a dry run: it never signals."""
    from resreap.errors import UsageError
    from resreap.ops import settings
    from resreap.ops import top as view

    given = _watch_defaults()
    given.update({k: v for k, v in locals().items() if k in ctx.params and k in given})
    try:
        if sort not in view.SORTS:
            raise UsageError(f"bad --sort {sort!r}: one of {', '.join(view.SORTS)}")
        st = settings.resolve(given, _from_flags(ctx), config_file)
        view.run(st, once=once, json_out=json_out, sort=sort, out=_print)
    except ResreapError as exc:
        fail(exc)


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  sudo resreap rules                 the rules of /etc/resreap/resreap.toml, and who falls
                                     under which now, what would happen and when
  sudo resreap rules --config new.toml
                                     the same for a file before it is installed
  sudo resreap rules --json          one JSON object: rules and holders
""")
def rules(
    config_file: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List the rules in force (each with its match, the inputs it trusts
    and its settings), then every process holding CLOSE_WAIT sockets now:
    the rule it falls under, its counting sockets, and what its rule would
    do and when.  A short dry-run look, as `top --once`: it never signals."""
    from resreap.ops import rules as book
    from resreap.ops import settings

    given = _watch_defaults()
    try:
        st = settings.resolve(given, (), config_file)
        book.run(st, json_out, _print)
    except ResreapError as exc:
        fail(exc)


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  sudo resreap reload                the running watch (or a dry run) re-reads its config file
  sudo resreap reload --pid 1234     that watch (the unit's ExecReload passes $MAINPID)
""")
def reload(
    pid: Annotated[Optional[int], typer.Option(
        "--pid", metavar="PID", help="The watch to reload (default: the one holding the lock, "
        "else a dry run's).")] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SEC", help="How long to wait for its answer.")] = 10.0,
) -> None:
    """Make the running watch re-read its config file (SIGHUP), wait until
    it has, and say whether the new settings apply.  Exits 1 when they were
    rejected (a bad file keeps the old settings) or when no answer came."""
    from resreap.errors import UsageError
    from resreap.ops.instance import reload as do_reload
    from resreap.ops.instance import find_watch

    try:
        target = pid or find_watch()
        if target is None:
            raise UsageError("no resreap watch runs here (none holds the lock, no dry run is "
                             "registered); name one with --pid")
        status = do_reload(target, timeout)
    except ResreapError as exc:
        fail(exc)
    typer.echo(f"resreap: pid {status.pid} reloaded: {status.detail}")


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  sudo resreap doctor                what works here, and what auto would pick
  sudo resreap doctor --json         one JSON object per check
""")
def doctor(json_out: JsonOpt = False) -> None:
    """Check this host: privileges, kernel, tracepoint, BTF, bcc, headers,
    sock_diag, pidfd, and which backend auto would pick and why.  Exits 0
    when resreap can run here (with either backend), 1 otherwise."""
    import json

    from resreap.ops import doctor as doc

    results = doc.checks()
    for check in results:
        if json_out:
            _print(json.dumps(check._asdict()))
        else:
            fix = f"  -> {check.fix}" if check.fix else ""
            _print(safe(f"{check.status:<4} {check.name:<13} {check.detail}{fix}"))
    raise typer.Exit(0 if doc.can_run(results) else 1)


# Shell completion: the packages ship the script (completion_script), which
# asks the program itself with this variable set.
COMPLETE_VAR = "_RESREAP_COMPLETE"


def completion_script(shell: str = "bash") -> str:
    """The completion script to install (the .deb's bash completion)."""
    from typer.completion import completion_init
    from typer._completion_shared import get_completion_script

    completion_init()
    return get_completion_script(prog_name="resreap", complete_var=COMPLETE_VAR, shell=shell)


def main() -> None:
    """Run the app; usage errors are one line and exit 2, like ours."""
    import os

    if COMPLETE_VAR in os.environ:
        # add_completion=False keeps --install-completion out of --help;
        # the shipped script still needs the shells' classes registered.
        from typer.completion import completion_init

        completion_init()
    try:
        from typer._click import exceptions as click_exc  # typer >= 0.26 vendors click
    except ImportError:  # pragma: no cover - older typer with click installed
        import click.exceptions as click_exc  # type: ignore[no-redef]
    try:
        code = app(prog_name="resreap", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        typer.echo(exc.format_message() if hasattr(exc, "format_message") else str(exc))
        sys.exit(0)
    except click_exc.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "resreap"
        typer.echo(f"resreap: error: {exc.format_message()} (see: {cmd} --help)", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
