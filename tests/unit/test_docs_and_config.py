"""Every option is documented; the config file is validated."""

import re
from pathlib import Path

import pytest
import typer

from resreap.ops import config
from resreap.cli import app
from resreap.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]


def options():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            for opt in param.opts + param.secondary_opts:
                if opt.startswith("-"):
                    yield name, opt


def mentioned(opt: str, text: str) -> bool:
    """``opt`` as a whole token: -l inside --limit or -lf does not count."""
    return re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text) is not None


def manual() -> str:
    """The manual: every page under docs/ (the README is its front page)."""
    return "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


@pytest.mark.parametrize("doc", ["docs", "man/resreap.8"])
def test_every_option_is_documented(doc):
    text = (manual() if doc == "docs" else (ROOT / doc).read_text()).replace("\\-", "-")
    missing = sorted({f"{cmd} {opt}" for cmd, opt in options() if not mentioned(opt, text)})
    assert not missing, f"{doc} lacks: {missing}"


def test_a_short_flag_inside_a_long_one_is_no_mention():
    assert not mentioned("-l", "use --limit or -lf")
    assert mentioned("-l", "the limit (`-l`)") and mentioned("-l", "-l, --limit")


def test_man_page_sections():
    text = (ROOT / "man/resreap.8").read_text()
    for section in ("SYNOPSIS", "OPTIONS", "EXAMPLES", "FIELDS", "OVERHEAD", "REQUIREMENTS",
                    "SEE ALSO"):
        assert f".SH {section}" in text


def test_every_help_has_examples():
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert "Examples:" in (command.epilog or ""), name


def test_example_config_loads_and_covers_every_setting(tmp_path):
    example = ROOT / "packaging/resreap.toml"
    assert config.load(str(example))["limit"] == 2
    text = example.read_text()
    assert all(key in text for key in config.KEYS)


@pytest.mark.parametrize("body,needle", [
    ("limit = 'x'", "is not an integer"),
    ("nonsense = 1", "unknown setting"),
    ("limit = [", "config"),
    ("dry_run = 1", "is not true or false"),
    ("limit = true", "is not an integer"),
    # issue #11.7: a typo in a list crashed the daemon at reload
    ('pid = ["1234"]', "every item must be a int"),
    ("pid = [true]", "every item must be a int"),
    ("ignore = [80]", "every item must be a str"),
])
def test_bad_config_is_a_usage_error(tmp_path, body, needle):
    f = tmp_path / "c.toml"
    f.write_text(body + "\n")
    with pytest.raises(UsageError, match=needle):
        config.load(str(f))


def test_config_accepts_dashes_and_a_watch_table(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[watch]\nhook-timeout = 3\nignore = ["127.0.0.1:2049"]\nsignal = 9\n')
    assert config.load(str(f)) == {"hook_timeout": 3, "ignore": ["127.0.0.1:2049"], "signal": "9"}


def test_missing_config_is_an_error_but_missing_default_is_not(tmp_path):
    with pytest.raises(UsageError, match="cannot read config"):
        config.load(str(tmp_path / "nope.toml"))
    if not Path(config.DEFAULT_PATH).exists():
        assert config.load(None) == {}


def test_service_unit_and_daemonset_agree_with_the_code(tmp_path):
    unit = (ROOT / "packaging/resreap.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=always" in unit
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    # bcc (the fallback) reads the headers under /lib/modules: hiding them
    # turned BPF off silently under the unit (issue #12.1).
    settings = [line for line in unit.splitlines() if not line.startswith("#")]
    assert "ProtectKernelModules=no" in settings and "ProtectKernelModules=yes" not in settings
    # No IP unless the network drop-in is installed (metrics, calling hooks).
    assert "RestrictAddressFamilies=AF_UNIX AF_NETLINK" in settings
    dropin = (ROOT / "packaging/resreap.service.d/network.conf").read_text()
    assert "AF_INET AF_INET6" in dropin and "IPAddressAllow=" in dropin
    assert "RuntimeDirectory=resreap" in settings  # the one-watch lock
    install = (ROOT / "scripts/install-service").read_text()
    assert "/opt/resreap/venv" in install and "/opt/resreap/venv/bin/resreap" in unit
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "packaging/kubernetes/daemonset.yaml").read_text()))
    ds = [d for d in docs if d["kind"] == "DaemonSet"][0]
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    context = spec["containers"][0]["securityContext"]
    assert set(context["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE",
                                                   "DAC_READ_SEARCH", "KILL"}
    assert context["capabilities"]["drop"] == ["ALL"] and context["readOnlyRootFilesystem"]
    assert context["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False
    # read-only root: the lock's directory is a volume
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert "/run/resreap" in mounts and not mounts["/run/resreap"].get("readOnly")
    assert all(m.get("readOnly") for path, m in mounts.items() if path.startswith(("/sys", "/lib")))
    # #23: a node agent's priority; a startup probe, not a fixed delay; the
    # lock on the host's /run/resreap; AppArmor's default profile would
    # forbid ptrace and signals to other containers' processes.
    assert spec["priorityClassName"] == "system-node-critical"
    container = spec["containers"][0]
    assert "startupProbe" in container and "initialDelaySeconds" not in container["livenessProbe"]
    from resreap import __version__

    assert container["image"] == f"localhost/resreap:{__version__}"  # scripts/build-image's tag
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["run"]["hostPath"]["path"] == "/run/resreap"
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/resreap"] == "unconfined"
    guide = (ROOT / "docs/kubernetes.md").read_text()
    assert "kill -HUP 1`" not in guide.replace("Never `kill -HUP 1`", "")
    assert "resreap reload" in guide
    # The unit: usage errors are not restarted; only its own logs directory.
    assert "RestartPreventExitStatus=2" in settings and "LogsDirectory=resreap" in settings
    assert not any(line.startswith("ReadWritePaths=") for line in settings)
    cm = [d for d in docs if d["kind"] == "ConfigMap"][0]
    conf = tmp_path / "cm.toml"
    conf.write_text(cm["data"]["resreap.toml"])
    assert config.load(str(conf))["dry_run"] is True


def test_every_watch_option_has_its_config_key():
    """One schema: a new flag without its key in the file (or a key no flag
    has) fails here."""
    from resreap.ops.settings import FILE_TO_CLI

    watch = typer.main.get_command(app).commands["watch"]
    params = {p.name for p in watch.params} - {"ctx", "config_file", "version"}
    keys = {FILE_TO_CLI.get(k, k) for k in config.KEYS}
    assert params == keys, (params ^ keys)


def test_settings_are_validated_once_into_typed_values(tmp_path):
    from resreap.ops import settings

    defaults = {p.name: p.default for p in typer.main.get_command(app).commands["watch"].params
                if p.name not in ("ctx", "version")}
    conf = tmp_path / "r.toml"
    conf.write_text("limit = 5\nsignal = 'KILL'\nfilter = '^java'\n")
    conf.chmod(0o644)
    st = settings.resolve(dict(defaults, limit=3), {"limit"}, str(conf))
    assert st.engine.limits.limit == 3            # the flag wins
    assert st.engine.plan.signal.name == "SIGKILL"  # the file fills the rest
    assert st.command_pattern == "^java" and st.backend == "auto"
    with pytest.raises(UsageError, match="--stall"):
        settings.validate(dict(defaults, stall=0))


def test_the_manual_names_every_decision_event():
    """The manual's list of log lines is the enum's: a new kind of line
    cannot ship undocumented."""
    from resreap.engine.decisions import Event

    page = (ROOT / "docs/watch.md").read_text()
    section = page[page.index("**Log lines.**"):]
    section = section[:section.index("\n\n")]
    missing = [e.value for e in Event if f"`{e.value}`" not in section]
    assert not missing, f"docs/watch.md's log lines lack {missing}"


def test_decision_lines_are_named_by_the_enum_only():
    """No decision("free text", ...) in the product: control flow and tests
    name lines through Event."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "resreap"
    loose = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "decision" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                loose.append(f"{path.name}:{node.lineno}")
    assert not loose


def test_the_version_comes_from_one_place():
    """#23: resreap/__init__.py's version is the package's (debian/changelog,
    a native package) and the metric's."""
    from resreap import __version__

    top = (ROOT / "debian/changelog").read_text().splitlines()[0]
    assert top.startswith(f"resreap ({__version__}) "), top
    assert "resreap_build_info" in (ROOT / "resreap/ops/metrics.py").read_text()


def test_bash_completion_is_answered_by_the_program(tmp_path):
    """#23: the package's completion script asks `resreap` with
    _RESREAP_COMPLETE set; the app answers though --install-completion is
    kept out of --help."""
    import os
    import subprocess
    import sys

    from resreap.cli import completion_script

    assert "_RESREAP_COMPLETE=complete_bash" in completion_script()
    env = dict(os.environ, COMP_WORDS="resreap watch --gr", COMP_CWORD="2",
               _RESREAP_COMPLETE="complete_bash")
    got = subprocess.run([sys.executable, "-m", "resreap"], env=env, capture_output=True,
                         text=True, timeout=30, cwd=tmp_path)
    assert got.stdout.split() == ["--grace"], got.stderr


# -- #31 item 7: journal queries that users cannot forge ----------------------

# What a sender writes itself (any user can send an entry with these) and what
# journald sets from the sender's credentials and cgroup.
_SENDERS = re.compile(r"RESREAP_|MESSAGE_ID|SYSLOG_IDENTIFIER|-t resreap")
_TRUSTED = re.compile(r"_SYSTEMD_UNIT=resreap\.service|-u resreap\b|_UID=0")


def _queries(text: str):
    """Each `journalctl ...` command in a text, up to its closing quote,
    backtick or parenthesis (a command may wrap onto the next line)."""
    flat = re.sub(r"\s+", " ", text.replace("\\-", "-"))
    return re.findall(r"journalctl[^`\"')]*", flat)


def test_every_documented_journal_query_filters_on_a_field_users_cannot_write():
    """A user's one datagram to journald (SYSLOG_IDENTIFIER=resreap,
    RESREAP_EVENT=reap, RESREAP_UNIT=nginx.service, the reap's MESSAGE_ID)
    was listed as a reap of nginx by the queries the README, docs and
    alerts gave.  Each query that selects on a sender's field now also
    selects on one journald sets."""
    paths = [ROOT / "README.md", ROOT / "man/resreap.8", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "packaging").rglob("*.yml")), *sorted((ROOT / "resreap").rglob("*.py"))]
    seen, forgeable = 0, []
    for path in paths:
        for query in _queries(path.read_text()):
            if _SENDERS.search(query):
                seen += 1
                if not _TRUSTED.search(query):
                    forgeable.append(f"{path.relative_to(ROOT)}: {query}")
    assert seen >= 4 and not forgeable, forgeable
    assert _queries("see `journalctl -u resreap\nRESREAP_EVENT=reap` there") == [
        "journalctl -u resreap RESREAP_EVENT=reap"]


# Markdown links, and `path/...` names in backquotes that point into the tree.
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_TREE_PATH = re.compile(r"`((?:docs|scripts|packaging|tests|bench|bpf|debian|man|\.ci)/[\w./-]+)`")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors: a heading lowercased, punctuation dropped, spaces to -."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


def broken_links(pages, root: Path = ROOT) -> list[str]:
    broken = []
    for page in pages:
        text = page.read_text()
        for link in _LINK.findall(text):
            if re.match(r"[a-z]+:", link):
                continue  # http:, https:, mailto: are not the tree's
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(root)}: {link}")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{page.relative_to(root)}: {link} (no such heading)")
        for name in _TREE_PATH.findall(text):
            if not (root / name.rstrip(".")).exists() and "*" not in name:
                broken.append(f"{page.relative_to(root)}: `{name}`")
    return broken


def test_every_relative_link_in_the_readme_and_the_manual_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert not broken_links(pages), broken_links(pages)


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/there.md").write_text("# A title\n")
    page = tmp_path / "page.md"
    page.write_text("[gone](nowhere.md) [bad](docs/there.md#no-such) [ok](docs/there.md#a-title)"
                    " [web](https://example.org/x) `docs/there.md` `scripts/gone`\n")
    assert broken_links([page], root=tmp_path) == [
        "page.md: nowhere.md", "page.md: docs/there.md#no-such (no such heading)",
        "page.md: `scripts/gone`"]


def test_the_readme_is_a_front_page():
    """The manual lives in docs/; the README says what it is, the two
    commands, a real run, the install paths, and links."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "sudo scripts/run watch" in readme and "sudo scripts/test" in readme
    assert "warning reap pid=" in readme and "(docs/README.md)" in readme
