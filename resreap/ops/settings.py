"""`watch` settings from the flags and the config file: one schema,
merged (defaults < file < flags) and validated once, before anything
applies, into typed values: the engine's WatchConfig and what ops needs.

Every setting's name is its long flag with "_" (``--fd-percent`` ->
fd_percent), in the file too (config.KEYS); three keep the original's
names in the file: filter, signal, json (the CLI's command_pattern, sig,
json_out)."""

from __future__ import annotations

import re
from typing import Any, Iterable, NamedTuple

from resreap.engine.filters import Filters, check_container, check_kube_glob, check_unit_glob, \
    parse_command_pattern
from resreap.engine.rules import KILLS, Limits, Match, Plan, Rule, parse_rate, parse_signal
from resreap.engine.config import WatchConfig
from resreap.errors import UsageError
from resreap.host.trust import check_chain
from resreap.ops import config
from resreap.sources.choice import BACKENDS

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
    # Where the container runtimes keep their records (host/pods; None: the
    # usual places).
    runtime_dirs: tuple[str, ...] | None = None


def positive(name: str, value: Any, minimum: float = 0.0, *, strict: bool = False) -> None:
    """A finite number >= minimum (> minimum when ``strict``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value \
        and value != float("inf") and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise UsageError(f"bad {name} value {value!r}: must be a number {bound}")


class TraceSettings(NamedTuple):
    """A validated `trace` (resolve_trace)."""

    filters: Filters
    grace: float
    min_age: float | None
    json_out: bool
    backend: str
    runtime_dirs: tuple[str, ...] | None = None
    # --summary: above this many transitions a second, one SUMMARY line per
    # process per second (engine/summary); 0: every line, always.
    summary: float = 0.0


def resolve_trace(command_pattern: str | None, ignore: Iterable[str], pids: Iterable[int],
                  grace: Any, min_age: Any, json_out: bool, backend: str,
                  unit: str | None = None, container: str | None = None,
                  namespace: str | None = None, pod: str | None = None,
                  runtime_dirs: Iterable[str] | None = None, summary: Any = 0.0):
    """trace's options, validated before anything opens (compiling the
    BPF program for a bad -i was seconds wasted): the same checks as
    watch's."""
    filters = Filters.parse(command_pattern, tuple(ignore or ()), tuple(pids or ()), unit,
                            container, namespace, pod)
    positive("-i", grace, strict=True)
    if min_age is not None:
        positive("--min-age", min_age, strict=True)
    positive("--summary", summary)
    if summary and min_age is not None:
        raise UsageError("--summary and --min-age do not go together: --min-age already shows "
                         "only the sockets that stay (--summary 0 with it)")
    _backend(backend)
    return TraceSettings(filters, float(grace), float(min_age) if min_age is not None else None,
                         bool(json_out), backend, _runtime_dirs(runtime_dirs), float(summary))


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
    return validate(merged, force_dry_run="dry_run" in typed and bool(given.get("dry_run")),
                    source=config_path or config.DEFAULT_PATH)


# The flag that names each setting, in errors about the top level (a rule's
# errors name its key instead: "rule 'edge': limit = 0 ...").
FLAGS = {"limit": "-l", "grace": "-i", "stall": "--stall", "fd_percent": "--fd-percent",
         "act_before": "--act-before", "kill": "kill",
         "wait": "-w", "hook_timeout": "--hook-timeout"}


def _limits_plan(st: dict[str, Any], name=FLAGS.__getitem__) -> tuple[Limits, Plan]:
    """The judging and acting settings (the default rule's, or one
    rule's), from merged values; ``name``: how errors call a setting."""
    positive(name("limit"), st["limit"], 1)
    positive(name("grace"), st["grace"], strict=True)
    positive(name("stall"), st["stall"], strict=True)
    if st["fd_percent"] is not None:
        positive(name("fd_percent"), st["fd_percent"])
        if not 0 < st["fd_percent"] <= 100:
            raise UsageError(f"bad {name('fd_percent')} value {st['fd_percent']!r}: must be in "
                             "(0, 100]")
    if st.get("act_before") is not None:
        positive(name("act_before"), st["act_before"], strict=True)
    positive(name("wait"), st["wait"])
    positive(name("hook_timeout"), st["hook_timeout"], strict=True)
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
                restart_also=frozenset(also), kill=_kill(st.get("kill") or "process", name))
    grace = float(st["grace"])
    limits = Limits(int(st["limit"]), grace, max_kills, per, stall=max(grace, float(st["stall"])),
                    fd_percent=float(st["fd_percent"]) if st["fd_percent"] is not None else None,
                    act_before=float(st["act_before"]) if st.get("act_before") is not None
                    else None)
    return limits, plan


def _kill(kill: str, name) -> str:
    if kill not in KILLS:
        raise UsageError(f"bad {name('kill')} {kill!r}: process (the process, the default) or "
                         "container (its container's main process, in a pod)")
    return kill


def _labels(raw: dict) -> tuple[tuple[str, str], ...]:
    """A rule's labels: each a Kubernetes label key and a string value."""
    for key, value in raw.items():
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9./_-]{1,316}", key):
            raise UsageError(f"match labels: {key} = {value!r}: expected label = \"value\", "
                             "e.g. labels = { app = \"checkout\" }")
    return tuple(sorted(raw.items()))


def _match(raw: dict[str, Any]) -> Match:
    port = raw.get("port")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"match port = {port}: must be 1-65535")
    user, uid = raw.get("user"), None
    if user is not None:
        uid = _uid(user)
    cmd = raw.get("cmd")
    return Match(parse_command_pattern(cmd) if cmd is not None else None,
                 check_unit_glob(raw["unit"], "match unit") if "unit" in raw else None,
                 check_container(raw["container"], "match container") if "container" in raw
                 else None, port, uid, str(user) if user is not None else None,
                 check_kube_glob(raw["namespace"], "match namespace") if "namespace" in raw
                 else None,
                 check_kube_glob(raw["pod"], "match pod") if "pod" in raw else None,
                 check_kube_glob(raw["container_name"], "match container_name")
                 if "container_name" in raw else None,
                 _labels(raw["labels"]) if "labels" in raw else None)


def _uid(user: str | int) -> int:
    """A user name or uid, resolved once, when the rules are read."""
    import pwd

    if isinstance(user, int) or user.isdigit():
        if int(user) < 0:
            raise UsageError(f"match user = {user}: not a uid")
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"match user = {user!r}: no such user") from None


def _rules(st: dict[str, Any], source: str) -> tuple[Rule, ...]:
    """The [[rule]]s: each a match and the top-level settings (and flags)
    with its own keys over them.  ``source``: the file they came from, for
    errors."""
    out = []
    for raw in st.get("rule") or ():
        try:
            mine = dict(st)
            for key in config.RULE_KEYS:
                if key in raw:
                    mine[FILE_TO_CLI.get(key, key)] = raw[key]
            limits, plan = _limits_plan(mine, name=lambda key: key)
            out.append(Rule(raw["name"], _match(raw["match"]), limits, plan))
        except UsageError as exc:
            raise UsageError(f"config {source}: rule {raw['name']!r}: {exc}") from None
    return tuple(out)


def validate(st: dict[str, Any], force_dry_run: bool = False,
             source: str = config.DEFAULT_PATH) -> WatchSettings:
    """Typed settings from merged values (rules from the file ``source``);
    raises UsageError, naming the option (or the rule), for the first bad
    one."""
    filters = Filters.parse(st["command_pattern"], st["ignore"] or (), st["pid"] or (),
                            st.get("unit"), st.get("container"), st.get("namespace"), st.get("pod"))
    limits, plan = _limits_plan(st)
    if st["poll_interval"] is not None:
        positive("--poll-interval", st["poll_interval"], 0.01)
    _backend(st["backend"])
    engine = WatchConfig(limits, plan, filters, _rules(st, source), st.get("default") == "ignore")
    # --dry-run on the command line makes every rule a dry run: whoever
    # tries a config with -d sees no kill.
    return WatchSettings(
        engine=engine.dry_run() if force_dry_run else engine,
        backend=st["backend"],
        poll_interval=float(st["poll_interval"]) if st["poll_interval"] is not None else None,
        log_file=st["log_file"], json_out=bool(st["json_out"]), debug=bool(st["debug"]),
        metrics=st["metrics"], command_pattern=st["command_pattern"],
        ignore=tuple(st["ignore"] or ()),
        runtime_dirs=_runtime_dirs(st.get("runtime_dir")))


def _runtime_dirs(dirs) -> tuple[str, ...] | None:
    """--runtime-dir: each root's alone (what is read there names the
    processes that rules select by namespace)."""
    if not dirs:
        return None
    for d in dirs:
        check_chain(d, "--runtime-dir", "pods would be named by whoever writes it")
    return tuple(dirs)
