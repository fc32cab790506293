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

from resreap.errors import UsageError
from resreap.host.trust import check_chain

DEFAULT_PATH = "/etc/resreap/resreap.toml"

# option name -> accepted types
KEYS: dict[str, tuple[type, ...]] = {
    "filter": (str,), "ignore": (list,), "pid": (list,), "limit": (int,),
    "grace": (int, float), "stall": (int, float), "fd_percent": (int, float), "hook": (str,), "signal": (str, int), "first_signal": (str, int),
    "wait": (int, float), "dry_run": (bool,), "restart_units": (bool,),
    "restart_unit": (list,), "debug": (bool,), "backend": (str,),
    "log_file": (str,), "json": (bool,), "hook_timeout": (int, float), "max_rate": (str,),
    "poll_interval": (int, float), "metrics": (str,),
}
_TYPE = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
         list: "a list"}
# What the items of a list setting must be.
ITEMS: dict[str, type] = {"ignore": str, "pid": int, "restart_unit": str}


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
    """The settings in ``path`` (None: the default path if it exists)."""
    if path is None:
        if not Path(DEFAULT_PATH).exists():
            return {}
        path = DEFAULT_PATH
    checked = check_trusted(path)
    try:
        raw = tomllib.loads(_read_checked(path, checked).decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in raw.get("watch", raw).items():
        name = key.replace("-", "_")
        if name not in KEYS:
            raise UsageError(f"config {path}: unknown setting {key!r} "
                             f"(known: {', '.join(sorted(KEYS))})")
        if isinstance(value, bool) and bool not in KEYS[name]:
            raise UsageError(f"config {path}: {key} = {value!r} is not {_TYPE[KEYS[name][0]]}")
        if not isinstance(value, KEYS[name]):
            raise UsageError(f"config {path}: {key} = {value!r} is not {_TYPE[KEYS[name][0]]}")
        item = ITEMS.get(name)
        if item is not None and any(isinstance(v, bool) or not isinstance(v, item) for v in value):
            raise UsageError(f"config {path}: {key} = {value!r}: every item must be a "
                             f"{item.__name__}")
        settings[name] = [str(v) if name == "ignore" else v for v in value] \
            if isinstance(value, list) else (str(value) if name.endswith("signal") else value)
    return settings
