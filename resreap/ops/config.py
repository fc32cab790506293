"""The config file (/etc/resreap/resreap.toml): every watch option, by its
long name with '_' or '-'.  Command-line flags override it; SIGHUP reloads
it.  Example: packaging/resreap.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from resreap.engine.rules import DEFAULT, NAME
from resreap.errors import UsageError
from resreap.host.trust import check_chain

DEFAULT_PATH = "/etc/resreap/resreap.toml"

# option name -> accepted types
KEYS: dict[str, tuple[type, ...]] = {
    "filter": (str,), "ignore": (list,), "pid": (list,), "limit": (int,),
    "grace": (int, float), "stall": (int, float), "fd_percent": (int, float), "act_before": (int, float),
    "hook": (str,), "signal": (str, int), "first_signal": (str, int),
    "wait": (int, float), "dry_run": (bool,), "restart_units": (bool,),
    "restart_unit": (list,), "debug": (bool,), "backend": (str,),
    "log_file": (str,), "json": (bool,), "hook_timeout": (int, float), "max_rate": (str,),
    "poll_interval": (int, float), "metrics": (str,), "unit": (str,), "container": (str,),
    "namespace": (str,), "pod": (str,), "kill": (str,), "runtime_dir": (list,),
}
# What a [[rule]] may set besides its name and match: the settings that
# judge and act on a process (the daemon's own, e.g. backend, stay global).
RULE_KEYS = ("limit", "grace", "stall", "fd_percent", "act_before", "signal", "first_signal", "wait", "hook",
             "hook_timeout", "dry_run", "restart_units", "max_rate", "kill")
MATCH_TYPES: dict[str, tuple[type, ...]] = {
    "cmd": (str,), "unit": (str,), "container": (str,), "port": (int,), "user": (str, int),
    "namespace": (str,), "pod": (str,), "container_name": (str,), "labels": (dict,)}
_TYPE = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
         list: "a list", dict: "a table"}
# What the items of a list setting must be.
ITEMS: dict[str, type] = {"ignore": str, "pid": int, "restart_unit": str, "runtime_dir": str}


def check_trusted(path: str) -> os.stat_result:
    """Refuse a file that someone other than root could have written: its
    hook runs as root.  Like sshd's StrictModes (see check_chain).  Returns
    the file's stat, for the opener to check it opened that very file."""
    check_chain(path, "config", "its hook would run as root")
    return os.stat(os.path.realpath(path))


def _read_checked(path: str, checked: os.stat_result) -> bytes:
    """The file's bytes, opened once (no symlink at the end) and checked to
    be the file whose chain was checked: nothing swapped in between."""
    try:
        fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino):
            raise UsageError(f"config {path} changed while it was checked: refusing it")
        return f.read()


def load(path: str | None) -> dict[str, Any]:
    """The settings in ``path`` (None: the default path if it exists), by
    option name; its [[rule]] tables, checked for shape, under "rule"."""
    if path is None:
        if not Path(DEFAULT_PATH).exists():
            return {}
        path = DEFAULT_PATH
    checked = check_trusted(path)
    try:
        raw = tomllib.loads(_read_checked(path, checked).decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}: {exc}") from None
    rules = raw.get("rule", [])
    top = dict(raw.get("watch", {k: v for k, v in raw.items() if k != "rule"}))
    # Only in the file: what the rules leave to the top-level settings.
    default = top.pop("default", "apply")
    if default not in ("apply", "ignore"):
        raise UsageError(f"config {path}: default = {default!r}: expected \"apply\" (processes "
                         "no rule matches get the top-level settings) or \"ignore\"")
    try:
        settings = _settings(top, KEYS)
        if "rule" in raw:
            settings["rule"] = _rules(rules)
    except UsageError as exc:
        raise UsageError(f"config {path}: {exc}") from None
    if default == "ignore":
        settings["default"] = default
    return settings


def _settings(table: dict[str, Any], known: dict[str, tuple[type, ...]] | tuple[str, ...]
              ) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise UsageError(f"unknown setting {key!r} (known: {', '.join(sorted(known))})")
        if isinstance(value, bool) and bool not in KEYS[name]:
            raise UsageError(f"{key} = {value!r} is not {_TYPE[KEYS[name][0]]}")
        if not isinstance(value, KEYS[name]):
            raise UsageError(f"{key} = {value!r} is not {_TYPE[KEYS[name][0]]}")
        item = ITEMS.get(name)
        if item is not None and any(isinstance(v, bool) or not isinstance(v, item) for v in value):
            raise UsageError(f"{key} = {value!r}: every item must be a {item.__name__}")
        settings[name] = [str(v) if name == "ignore" else v for v in value] \
            if isinstance(value, list) else (str(value) if name.endswith("signal") else value)
    return settings


def _rules(rules: Any) -> list[dict[str, Any]]:
    """[[rule]] tables: each a name, a match table and some RULE_KEYS."""
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise UsageError("rule must be an array of tables: [[rule]] sections")
    out, names = [], set()
    for number, table in enumerate(rules, 1):
        name = table.get("name")
        label = f"rule {name!r}" if isinstance(name, str) else f"rule #{number}"
        try:
            if not isinstance(name, str) or not NAME.match(name) or name == DEFAULT:
                raise UsageError(f"name = {name!r}: each rule needs a name of letters, digits, "
                                 f"'.', '_', '-' (at most 64), not {DEFAULT!r}")
            if name in names:
                raise UsageError("a rule of that name comes earlier")
            names.add(name)
            match = table.get("match")
            if not isinstance(match, dict) or not match:
                raise UsageError("match = {...} is required, with at least one of "
                                 + ", ".join(MATCH_TYPES))
            for key, value in match.items():
                if key not in MATCH_TYPES:
                    raise UsageError(f"unknown match key {key!r} (known: {', '.join(MATCH_TYPES)})")
                if isinstance(value, bool) or not isinstance(value, MATCH_TYPES[key]):
                    raise UsageError(f"match {key} = {value!r} is not "
                                     + " or ".join(_TYPE[t] for t in MATCH_TYPES[key]))
            rest = {k: v for k, v in table.items() if k not in ("name", "match")}
            out.append({"name": name, "match": dict(match), **_settings(rest, RULE_KEYS)})
        except UsageError as exc:
            raise UsageError(f"{label}: {exc}") from None
    return out
