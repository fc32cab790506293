"""The layout is the architecture: resreap's subpackages are layers, each
importing only from those below it (import-linter checks the contract in
pyproject.toml), and docs/architecture.md's layout names every module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_are_kept():
    done = _lint(ROOT, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("module, bad_import", [
    ("host/procinfo.py", "from resreap.engine import watch"),   # a fact reaching up
    ("engine/killer.py", "from resreap.ops import metrics"),    # the engine reaching ops
    ("model.py", "from resreap.host import procinfo"),          # the shared base reaching up
])
def test_a_violation_fails_the_check(tmp_path, module, bad_import):
    copy = tmp_path / "resreap"
    shutil.copytree(ROOT / "resreap", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    done = _lint(tmp_path, tmp_path)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs/architecture.md").read_text()
    layout = page[page.index("Layout:"):]
    layout = layout.split("\n\n")[0]
    modules = sorted(str(p.relative_to(ROOT / "resreap").with_suffix(""))
                     for p in (ROOT / "resreap").rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert not missing, f"docs/architecture.md's layout lacks {missing}"
    named = set(re.findall(r"`((?:host|sources|engine|ops)/[a-z_]+)`", layout))
    assert named <= set(modules), f"docs/architecture.md names modules that do not exist: {named - set(modules)}"


# OSError and the subclasses code catches instead of it.
_OS_ERRORS = {"OSError", "IOError", "EnvironmentError", "FileNotFoundError",
              "PermissionError", "ProcessLookupError", "BlockingIOError",
              "ChildProcessError", "InterruptedError", "IsADirectoryError",
              "NotADirectoryError", "FileExistsError", "ConnectionError", "TimeoutError"}


def os_errors_caught(source: str) -> list[int]:
    """Lines of ``source`` whose except clause names an OS error (alone or
    in a tuple), or is bare."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ExceptHandler):
            continue
        if node.type is None:
            lines.append(node.lineno)
            continue
        kinds = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        names = {k.id if isinstance(k, ast.Name) else getattr(k, "attr", "") for k in kinds}
        if names & _OS_ERRORS:
            lines.append(node.lineno)
    return lines


def test_the_engine_never_catches_os_errors():
    """Signals, /proc and kernel calls translate OS errors at their edge
    (host/procinfo, host/process, host/sockets, sources/ringbuf): above it,
    an errno is never read as "the process is gone"."""
    found = {str(p.relative_to(ROOT)): lines
             for p in (ROOT / "resreap" / "engine").rglob("*.py")
             if (lines := os_errors_caught(p.read_text()))}
    assert not found, f"OS errors caught in the engine: {found}"


def test_the_os_error_rule_can_fail():
    """The check above is real: it finds each way of catching one."""
    sample = (
        "try:\n    pass\nexcept OSError:\n    pass\n"
        "try:\n    pass\nexcept (ValueError, PermissionError) as e:\n    pass\n"
        "try:\n    pass\nexcept builtins.FileNotFoundError:\n    pass\n"
        "try:\n    pass\nexcept:\n    pass\n"
        "try:\n    pass\nexcept ValueError:\n    pass\n")
    assert os_errors_caught(sample) == [3, 7, 11, 15]


# File-system calls that read a process's files: only the /proc edge
# (host/procinfo.Proc) makes them for the engine.
_FS_CALLS = {"open", "listdir", "readlink", "stat", "scandir", "lstat"}


def fs_calls(source: str) -> list[int]:
    """Lines of ``source`` that call open() or an os file-system read, and
    lines that name a ``proc_root`` (the root threaded as a string)."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
                and isinstance(f.value, ast.Name) and f.value.id == "os" else ""
            if name in _FS_CALLS:
                lines.append(node.lineno)
        elif isinstance(node, (ast.Name, ast.arg)) and "proc_root" in (
                getattr(node, "id", None), getattr(node, "arg", None)):
            lines.append(node.lineno)
    return sorted(set(lines))


def test_the_engine_reads_proc_only_through_one_object():
    """#20: the /proc edge is one object whose root is given once (the
    fixture tree in tests); the engine opens no file itself, and no module
    threads a root string about."""
    found = {str(p.relative_to(ROOT)): lines
             for p in (ROOT / "resreap" / "engine").rglob("*.py")
             if (lines := fs_calls(p.read_text()))}
    threaded = [str(p.relative_to(ROOT)) for p in (ROOT / "resreap").rglob("*.py")
                if "proc_root" in p.read_text()]
    assert not found and not threaded, (found, threaded)


def test_the_proc_edge_rule_can_fail():
    sample = ("open(f'/proc/{pid}/stat')\nos.listdir('/proc')\nos.readlink(x)\n"
              "def f(proc_root): pass\nself.proc.read(1)\nlen(x)\n")
    assert fs_calls(sample) == [1, 2, 3, 4]


def test_no_product_function_is_longer_than_60_lines():
    """A function a reader cannot hold in one screen is where the next
    change goes wrong (cli.watch was 178 lines)."""
    import ast

    long = []
    for path in (ROOT / "resreap").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert not long


def test_one_owner_changes_what_counts_against_whom():
    """The per-owner counter and an entry's ``counted`` change together,
    in Counting._count, _forget and _uncount only (they were changed by
    hand in five places, and could disagree)."""
    import ast

    allowed = {"_count", "_forget", "_uncount"}
    stray = []
    for path in (ROOT / "resreap").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                mutates = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                           and node.func.attr in ("add", "remove")
                           and getattr(node.func.value, "attr", "") == "counter")
                sets = (isinstance(node, ast.Assign) and any(
                    getattr(t, "attr", "") == "counted" for t in ast.walk(node)
                    if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store)))
                born = path.name == "tracker.py" and func.name == "__init__"  # Entry()
                if (mutates or sets) and func.name not in allowed and not born:
                    stray.append(f"{path.name}:{node.lineno} in {func.name}")
    assert not stray


@pytest.mark.parametrize("protocol, real, fake", [
    ("resreap.engine.killer:KillEngine", "resreap.engine.killer:Killer", "fakehost:FakeKiller"),
    ("resreap.engine.owners:KernelSockets", "resreap.host.sockets:SocketTable",
     "fakehost:FakeKernel"),
])
def test_the_fakes_keep_to_what_the_real_ones_offer(protocol, real, fake):
    """The fake host's kill engine and kernel declare the engine's Protocol;
    each member of it exists on the real class and on the fake, methods
    with the same parameters, so drift fails here and not as an
    AttributeError in some scenario."""
    import importlib
    import inspect

    def load(spec):
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)

    proto, real_cls, fake_cls = load(protocol), load(real), load(fake)
    assert proto in fake_cls.__mro__
    members = {n for n in vars(proto) if not n.startswith("_")} | set(proto.__annotations__)
    assert members
    for name in sorted(members):
        want = getattr(proto, name, None)
        for cls in (real_cls, fake_cls):
            got = inspect.getattr_static(cls, name, None)
            if got is None:  # a data attribute, set in __init__
                assert name in inspect.getsource(cls.__init__), f"{cls.__name__}.{name}"
                continue
            if callable(want) and not isinstance(want, property):
                assert list(inspect.signature(got).parameters) == \
                    list(inspect.signature(want).parameters), f"{cls.__name__}.{name}"


# -- #33: no import circles ------------------------------------------------------

def _import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the resreap modules it imports, every import counted (at
    the top, inside a function, under TYPE_CHECKING): a plain ast graph."""
    import ast

    mods = {}
    for path in root.rglob("*.py"):
        name = ".".join(("resreap",) + path.relative_to(root).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resreap"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    graph[mod].add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                graph[mod].update(a.name for a in node.names if a.name.startswith("resreap"))
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(mod: str) -> None:
        index[mod] = low[mod] = len(index)
        stack.append(mod)
        for dep in graph[mod] & graph.keys():
            if dep not in index:
                visit(dep)
                low[mod] = min(low[mod], low[dep])
            elif dep in stack:
                low[mod] = min(low[mod], index[dep])
        if low[mod] == index[mod]:
            comp = []
            while True:
                comp.append(stack.pop())
                if comp[-1] == mod:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for mod in sorted(graph):
        if mod not in index:
            visit(mod)
    return out


def test_no_module_imports_back_into_one_that_imports_it():
    """Four import circles were left (engine config/killer/policy/rules,
    fdscan/owners, the sources' interface and its implementations, ops
    daemon/settings/tracing): rule settings now live with the rules, the
    scanner names the index it needs as a Protocol, the choice of source
    and trace's settings have their own homes."""
    assert _circles(_import_graph(ROOT / "resreap")) == []
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
