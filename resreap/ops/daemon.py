"""The `watch` daemon: what runs around the engine's Watcher in a real
process.  It takes the settings (flags over the file), the logs, the
one-watch lock, the fd limit, the event source and the metrics endpoint;
pings systemd from the loop; applies a SIGHUP reload (and answers it for
`resreap reload`); and on INT/TERM lets running kill sequences finish,
bounded.  The CLI only resolves typed options and calls ``run``."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Iterable

from resreap import __version__, tunables
from resreap.engine.decisions import Event, decision
from resreap.engine.owners import check_privileges
from resreap.engine import view
from resreap.engine.watch import Watcher
from resreap.errors import OutputGone, ResreapError, UsageError
from resreap.ops import decisionlog, settings, stack
from resreap.ops.instance import Lock, ReloadStatus, hold_watch_lock, raise_fd_limit, \
    read_reload_status, register_dry_run, write_reload_status
from resreap.ops.recent import Recorder, recent_path
from resreap.ops.sdnotify import Notifier
from resreap.sources.bpf_events import LOAD_TIMEOUT

log = logging.getLogger(__name__)

# A stop lets running kill sequences finish for at most this long: under
# systemd (TimeoutStopSec=5) a stop never takes more than 5 s.
STOP_WAIT = 4.0
# How often the loop publishes a snapshot for the metrics endpoint.
SNAPSHOT_EVERY = 1.0


def _rule_fields(config) -> dict:
    """The start and reload lines' word on rules (none without any)."""
    if not config.rules and not config.ignore_unmatched:
        return {}
    out = {"rules": [r.name for r in config.rules]}
    if config.ignore_unmatched:
        out["default"] = "ignore"
    return out


def stop_on_signals() -> None:
    """End cleanly on INT and TERM, even when started with SIGINT ignored
    (a background job of a non-interactive shell inherits SIG_IGN)."""
    def handler(_signo, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(given: dict[str, Any], typed: Iterable[str], config_file: str | None) -> int:
    """Run `watch` until INT or TERM: ``given`` are the flags' values by
    parameter name, ``typed`` those the user typed (they win over the
    file).  Returns the exit code (1: nowhere left to log); raises
    ResreapError for what stops it from starting."""
    stop_on_signals()
    return Daemon(given, typed, config_file).run()




class Daemon:
    def __init__(self, given: dict[str, Any], typed: Iterable[str],
                 config_file: str | None, notifier: Notifier | None = None) -> None:
        self._given, self._typed, self._config_file = dict(given), frozenset(typed), config_file
        self.notifier = notifier or Notifier()
        self.settings = settings.resolve(self._given, self._typed, config_file)
        tunables.get()  # a bad knob is a one-line error now, not mid-start
        try:
            self.handlers = decisionlog.configure(debug=self.settings.debug,
                                                  json_lines=self.settings.json_out,
                                                  log_file=self.settings.log_file)
        except OSError as exc:
            raise UsageError(f"cannot open --log-file {self.settings.log_file}: "
                             f"{exc.strerror}") from None
        self._reload_requested = False
        last = read_reload_status()
        self._generation = last.generation if last else 0
        self.lock: Lock | None = None
        self._acts_alone = False  # holds the one-watch lock (not a dry run's registration)
        self.exporter = None
        self._snapshot_at = float("-inf")
        self.watcher: Watcher | None = None
        self.recorder: Recorder | None = None  # the acting watch's recent.json, for top

    # -- start ------------------------------------------------------------

    def run(self) -> int:
        gone = False
        try:
            self._start()
            self.watcher.run()
        except KeyboardInterrupt:
            pass
        except OutputGone:
            gone = True
        if self.watcher is not None:
            self._stop()
        return 1 if gone else 0

    def _start(self) -> None:
        signal.signal(signal.SIGHUP, self._hangup)
        check_privileges()  # first: a user reads "run as root", not a lock error
        fd_limit = raise_fd_limit()
        st, config = self.settings, self.settings.engine
        # One watch acts per host; a dry run never signals, so it may run
        # beside one to try settings (registered, so that reload finds it).
        # (A dry run: every rule is one.)
        self._acts_alone = config.acts
        self.lock = hold_watch_lock() if config.acts else register_dry_run()
        self._record_reaps()
        if st.backend != "proc":
            # Milliseconds for the prebuilt program; where bcc compiles
            # instead, seconds (a minute on a busy host): say so at once,
            # and ask systemd for the time the loader may take.
            decision(Event.LOADING, logging.INFO, backend=st.backend,
                     note="loading and attaching the BPF program")
            self.notifier.extend(LOAD_TIMEOUT + 30, "loading the BPF program")
        # The kernel's first pass: churn costs nothing here (trace keeps
        # the full stream).
        selected, table, self.watcher = stack.build(st, config, first_pass=True,
                                                    tick=self._tick)
        self.watcher.listen(self._heard)  # the recent reaps, for top
        if st.metrics:
            from resreap.ops.metrics import Exporter

            self.exporter = Exporter(st.metrics, selected.source.name, selected.source.loader,
                                     bpf_expected=st.backend != "proc")
        if selected.fallback_reason:
            decision(Event.BACKEND, logging.WARNING, backend="proc",
                     reason=selected.fallback_reason,
                     note=f"polling every {selected.source.latency:g}s: detection up to one "
                          "interval late")
        # Attach and seed first: "start" means resreap is watching now.
        self.watcher.start()
        self._say_start(selected, len(table.namespaces), fd_limit)
        self.notifier.ready(self._status(selected.source, len(table.namespaces)))

    def _describe_lock(self) -> str:
        if self._acts_alone:
            return self.lock.describe()
        if self.lock.enforced:
            return "none (dry run; registered for resreap reload)"
        return f"none (dry run; {self.lock.why})"

    def _status(self, source, namespaces: int) -> str:
        """One line for `systemctl status`: what is watched, and how."""
        config = self.settings.engine
        how = f"{source.name}, loader {source.loader}" if source.loader else source.name
        mode = "dry run: never signals" if not config.acts else f"plan {config.plan.describe()}"
        rules = f"; rules {','.join(r.name for r in config.rules)}" if config.rules else ""
        return (f"watching {namespaces} network namespace(s) ({how}); limit "
                f"{config.limits.limit}, grace {config.limits.grace:g}s; {mode}{rules}")

    def _say_start(self, selected, namespaces: int, fd_limit: int) -> None:
        st, config, source = self.settings, self.settings.engine, selected.source
        # How the program came to run, or why it did not: loud when BPF was
        # expected and polling runs.
        how = {"loader": source.loader} if source.loader else {}
        if source.loader_why:
            how["loader_why"] = source.loader_why
        if selected.fallback_reason:
            how["bpf_unavailable"] = selected.fallback_reason
        decision(Event.START, logging.WARNING, backend=source.name, **how,
                 first_pass=source.first_pass,
                 limit=config.limits.limit, grace=config.limits.grace, stall=config.limits.stall,
                 fd_percent=config.limits.fd_percent or "-",
                 **({"act_before": config.limits.act_before}
                    if config.limits.act_before is not None else {}),
                 plan=config.plan.describe(),
                 dry_run=config.plan.dry_run, restart_units=config.plan.restart_units,
                 filter=st.command_pattern or "",
                 ignore=list(st.ignore), pid=sorted(config.filters.pids),
                 **_rule_fields(config), namespaces=namespaces,
                 lock=self._describe_lock(),
                 fd_limit=fd_limit, version=__version__,
                 note="Ctrl-C to end")

    def _record_reaps(self) -> None:
        """The watch that acts alone keeps its last outcomes beside the
        lock for `resreap top` (ops/recent.py); a dry run does not (it would
        write over the acting watch's)."""
        if not (self._acts_alone and self.lock.enforced) or self.recorder is not None:
            return
        try:
            self.recorder = Recorder()
        except (OSError, ResreapError) as exc:
            self._recording_failed(exc)

    def _heard(self, outcome, added: dict) -> None:
        if self.recorder is not None:
            self.recorder.heard(outcome, added)

    def _recording_failed(self, exc: Exception) -> None:
        self.recorder = None
        log.warning("cannot write %s: %s (resreap top will not show this watch's reaps)",
                    recent_path(), getattr(exc, "strerror", None) or exc)

    # -- the loop's tick --------------------------------------------------

    def _hangup(self, _signo, _frame) -> None:
        self._reload_requested = True

    def _tick(self, watcher: Watcher) -> None:
        """Once per loop turn: the output, systemd's watchdog, the metrics
        snapshot, a requested reload."""
        if decisionlog.output_gone(self.handlers):
            raise OutputGone("stderr is closed and there is no --log-file")
        self.notifier.alive()
        if self.recorder is not None:
            try:
                self.recorder.flush()
            except OSError as exc:
                self._recording_failed(exc)
        if self.exporter is not None and time.monotonic() - self._snapshot_at >= SNAPSHOT_EVERY:
            from resreap.ops.metrics import TOP

            self._snapshot_at = time.monotonic()
            self.exporter.snapshot = view.snapshot(watcher, TOP)
        if self._reload_requested:
            self._reload_requested = False
            self._reload(watcher)

    def _reload(self, watcher: Watcher) -> None:
        """SIGHUP: reopen the log files, read the settings again; a bad
        file keeps the old settings.  Either way `resreap reload` is told."""
        for problem in decisionlog.reopen(self.handlers):
            decision(Event.RELOAD, logging.ERROR, error=f"cannot reopen the log file: {problem}")
        try:
            fresh = settings.resolve(self._given, self._typed, self._config_file).engine
            if fresh.acts and not self._acts_alone:
                lock = hold_watch_lock()  # leaving dry run: act alone
                if self.lock is not None:
                    self.lock.release()  # the dry run's registration
                self.lock, self._acts_alone = lock, True
                self._record_reaps()
        except ResreapError as exc:
            self._rejected(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a validation gap must not end the daemon
            self._rejected(repr(exc))
            return
        watcher.reconfigure(fresh)
        self.settings = self.settings._replace(engine=fresh)
        self.notifier.status(self._status(watcher.source, len(watcher.resolver.kernel.namespaces)))
        decision(Event.RELOAD, logging.WARNING, limit=fresh.limits.limit,
                 grace=fresh.limits.grace, stall=fresh.limits.stall,
                 plan=fresh.plan.describe(), dry_run=fresh.plan.dry_run, **_rule_fields(fresh))
        rules = f" rules={','.join(r.name for r in fresh.rules)}" if fresh.rules else ""
        self._answer(True, f"limit={fresh.limits.limit} grace={fresh.limits.grace:g} "
                           f"stall={fresh.limits.stall:g} plan={fresh.plan.describe()!r} "
                           f"dry_run={fresh.plan.dry_run}{rules}")

    def _rejected(self, error: str) -> None:
        decision(Event.RELOAD, logging.ERROR, error=error, note="keeping the old settings")
        self._answer(False, error)

    def _answer(self, ok: bool, detail: str) -> None:
        """For `resreap reload` (ExecReload): the result of this reload.
        Where it cannot be written (a read-only /run), the reload applied
        all the same; say so once, since `resreap reload` will time out."""
        self._generation += 1
        if self.exporter is not None:
            self.exporter.reloaded(ok)
        try:
            write_reload_status(ReloadStatus(os.getpid(), self._generation, ok, detail))
        except OSError as exc:
            decision(Event.RELOAD, logging.WARNING,
                     error=f"cannot write the reload status: {exc.strerror or exc}",
                     note="`resreap reload` will not see this answer")

    # -- stop -------------------------------------------------------------

    def _stop(self) -> None:
        """Let running kill sequences finish (bounded; a second Ctrl-C
        abandons them), then say what was done."""
        watcher = self.watcher
        self.notifier.stopping()
        running = watcher.killer.running_pids()
        wait = min(STOP_WAIT, watcher.current.plan.wait * 2 + 1)
        try:
            if running:
                decision(Event.STOPPING, logging.WARNING, kills_in_progress=running,
                         waiting_up_to=round(wait, 1),
                         note="letting the kill sequences finish; Ctrl-C again to abandon them")
            lost = watcher.source.lost()
            watcher.shutdown(timeout=wait)
        except KeyboardInterrupt:
            decision(Event.ABANDON, logging.WARNING, kills_in_progress=watcher.killer.running_pids(),
                     note="second Ctrl-C: these processes were signalled and are not waited "
                          "for; check them (a stopped one may hold its sockets)")
            lost = watcher.source.lost()
        decision(Event.STOP, logging.WARNING, lost_events=lost if lost is not None else "unknown",
                 reaped=watcher.tally.reaped,
                 tracked=len(watcher.table), owner_cache=watcher.resolver.index.cached)
