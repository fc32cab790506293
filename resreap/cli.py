"""The command line: the typer app and nothing else.  Domain modules raise
ResreapError; only this module prints and chooses exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated, NoReturn, Optional

import typer

from resreap import __version__
from resreap.errors import ResreapError

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
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
DebugOpt = Annotated[bool, typer.Option("--debug", "-D", help="Log every event and decision.")]


@app.callback()
def _root(version: VersionOpt = None) -> None:
    """Find processes that leak TCP sockets in CLOSE_WAIT, and reap them."""


def fail(exc: ResreapError) -> NoReturn:
    typer.echo(f"resreap: error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def _stop_on_signals() -> None:
    """End cleanly on INT and TERM, even when started with SIGINT ignored
    (a background job of a non-interactive shell inherits SIG_IGN)."""
    def handler(_signo, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="resreap: %(levelname)s: %(message)s", stream=sys.stderr)


def _print(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # `resreap trace | head`
        raise KeyboardInterrupt from None


@app.command(context_settings=CONTEXT, epilog="""\b
Examples:
  resreap trace                      every CLOSE_WAIT transition, live
  resreap trace -f '^java'           only processes whose command starts with java
  resreap trace -F 127.0.0.1:2049 -F '[::1]:*'
                                     ignore these foreign endpoints
  resreap trace --json | jq .        JSON lines (fields: see README)
  resreap trace --backend proc       poll sock_diag instead of BPF
""")
def trace(
    command_pattern: PatternOpt = None,
    ignore: IgnoreOpt = None,
    pid: PidOpt = None,
    json_out: JsonOpt = False,
    backend: BackendOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    """Show TCP sockets entering and leaving CLOSE_WAIT, with their owners.

    Each line: time, EVENT (EXISTING at start, ENTER, EXIT), the owning
    PID and COMM (the process holding the socket, found from the socket
    itself), local -> remote, and on EXIT the time spent in CLOSE_WAIT.
    Ctrl-C prints a per-process summary and exits 0.
    """
    from resreap import formatting
    from resreap.events import open_source
    from resreap.filters import Filters
    from resreap.owners import OwnerResolver, check_privileges
    from resreap.sockets import SocketTable
    from resreap.trace import Tracer

    _setup_logging(debug)
    _stop_on_signals()
    tracer = None
    try:
        filters = Filters.parse(command_pattern, ignore or (), pid or ())
        check_privileges()
        table = SocketTable()
        selected = open_source(backend, table, latency=0.1)
        if selected.fallback_reason:
            typer.echo(f"resreap: BPF unavailable ({selected.fallback_reason}); "
                       f"polling every {selected.source.latency:g}s instead", err=True)
        tracer = Tracer(selected.source, OwnerResolver(table), filters)
        typer.echo(f"Tracing TCP CLOSE_WAIT transitions ({selected.source.name} backend, "
                   f"{len(table.namespaces)} network namespace(s)). Ctrl-C to end.", err=True)
        emit = formatting.trace_json if json_out else formatting.trace_line
        if not json_out:
            _print(formatting.HEADER)
        for rec in tracer.start():
            _print(emit(rec))
        while True:
            for rec in tracer.step(selected.source.latency):
                _print(emit(rec))
    except KeyboardInterrupt:
        pass
    except ResreapError as exc:
        fail(exc)
    if tracer is None:
        return
    lost = tracer.source.lost()
    rows = tracer.summary()
    try:
        if json_out:
            _print(formatting.summary_json(rows))
        else:
            typer.echo("", err=True)
            for line in formatting.summary_lines(rows):
                typer.echo(line, err=True)
        if lost:
            typer.echo(f"resreap: warning: {lost} event(s) were lost in the kernel", err=True)
    except KeyboardInterrupt:
        pass
    tracer.source.close()


def main() -> None:
    app()
