"""`watch` settings from the flags and the config file: one schema,
merged (defaults < file < flags) and validated once, before anything
applies, into typed values: the engine's WatchConfig and what ops needs.

Every setting's name is its long flag with "_" (``--fd-percent`` ->
fd_percent), in the file too (config.KEYS); three keep the original's
names in the file: filter, signal, json (the CLI's command_pattern, sig,
json_out)."""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from resreap.engine.filters import Filters
from resreap.engine.killer import Plan, parse_signal
from resreap.engine.policy import Limits, parse_rate
from resreap.engine.config import WatchConfig
from resreap.errors import UsageError
from resreap.ops import config
from resreap.sources.events import BACKENDS

# config file key -> the CLI's parameter name, where they differ
FILE_TO_CLI = {"filter": "command_pattern", "signal": "sig", "json": "json_out"}


class WatchSettings(NamedTuple):
    """A validated `watch`: the engine's part, and the operator's."""

    engine: WatchConfig
    backend: str
    poll_interval: float | None
    log_file: str | None
    json_out: bool
    debug: bool
    metrics: str | None
    command_pattern: str | None
    ignore: tuple[str, ...]


def positive(name: str, value: Any, minimum: float = 0.0, *, strict: bool = False) -> None:
    """A finite number >= minimum (> minimum when ``strict``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value \
        and value != float("inf") and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise UsageError(f"bad {name} value {value!r}: must be a number {bound}")


def resolve_trace(command_pattern: str | None, ignore: Iterable[str], pids: Iterable[int],
                  grace: Any, min_age: Any, json_out: bool, backend: str):
    """trace's options, validated before anything opens (compiling the
    BPF program for a bad -i was seconds wasted): the same checks as
    watch's."""
    from resreap.ops.tracing import TraceSettings

    filters = Filters.parse(command_pattern, tuple(ignore or ()), tuple(pids or ()))
    positive("-i", grace, strict=True)
    if min_age is not None:
        positive("--min-age", min_age, strict=True)
    _backend(backend)
    return TraceSettings(filters, float(grace), float(min_age) if min_age is not None else None,
                         bool(json_out), backend)


def _backend(name: str) -> None:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


def resolve(given: dict[str, Any], from_flags: Iterable[str],
            config_path: str | None) -> WatchSettings:
    """The flags' values (``given``, by CLI parameter name; ``from_flags``:
    those the user typed) over the config file's, validated."""
    typed = set(from_flags)
    merged = dict(given)
    for name, value in config.load(config_path).items():
        key = FILE_TO_CLI.get(name, name)
        if key not in typed:
            merged[key] = value
    return validate(merged)


def validate(st: dict[str, Any]) -> WatchSettings:
    """Typed settings from merged values; raises UsageError, naming the
    option, for the first bad one."""
    filters = Filters.parse(st["command_pattern"], st["ignore"] or (), st["pid"] or ())
    positive("-l", st["limit"], 1)
    positive("-i", st["grace"], strict=True)
    positive("--stall", st["stall"], strict=True)
    if st["fd_percent"] is not None:
        positive("--fd-percent", st["fd_percent"])
        if not 0 < st["fd_percent"] <= 100:
            raise UsageError(f"bad --fd-percent value {st['fd_percent']!r}: must be in (0, 100]")
    positive("-w", st["wait"])
    positive("--hook-timeout", st["hook_timeout"], strict=True)
    if st["poll_interval"] is not None:
        positive("--poll-interval", st["poll_interval"], 0.01)
    _backend(st["backend"])
    max_kills, per = parse_rate(st["max_rate"])
    also = tuple(st.get("restart_unit") or ())
    for unit in also:
        if not unit.endswith(".service") or "/" in unit:
            raise UsageError(f"bad --restart-unit {unit!r}: expected a system service's name, "
                             "e.g. legacy.service")
    plan = Plan(signal=parse_signal(str(st["sig"])),
                first_signal=parse_signal(str(st["first_signal"])) if st["first_signal"] else None,
                wait=float(st["wait"]), hook=st["hook"], hook_timeout=float(st["hook_timeout"]),
                dry_run=bool(st["dry_run"]), restart_units=bool(st["restart_units"]),
                restart_also=frozenset(also))
    grace = float(st["grace"])
    limits = Limits(int(st["limit"]), grace, max_kills, per, stall=max(grace, float(st["stall"])),
                    fd_percent=float(st["fd_percent"]) if st["fd_percent"] is not None else None)
    return WatchSettings(
        engine=WatchConfig(limits, plan, filters),
        backend=st["backend"],
        poll_interval=float(st["poll_interval"]) if st["poll_interval"] is not None else None,
        log_file=st["log_file"], json_out=bool(st["json_out"]), debug=bool(st["debug"]),
        metrics=st["metrics"], command_pattern=st["command_pattern"],
        ignore=tuple(st["ignore"] or ()))
