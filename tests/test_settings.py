"""``vaultq.settings``: every option declared once; the CLI, the supervisor's children and
the docs follow the declarations."""

from __future__ import annotations

import argparse
import ast
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support.workers import ROOT, worker_env

import vaultq
from vaultq import config
from vaultq.cli import build_parser
from vaultq.settings import (
    AppSettings,
    OptionInfo,
    WorkerSettings,
    environment,
    options_of,
    settings_from_flags,
)

APP_OPTIONS = options_of(AppSettings)
WORKER_OPTIONS = options_of(WorkerSettings)


# -- defaults ----------------------------------------------------------------------------

APP_DEFAULTS = {
    "broker": None,
    "queue": config.DEFAULT_QUEUE,
    "clock_skew": config.DEFAULT_CLOCK_SKEW,
    "max_envelope_size": config.DEFAULT_MAX_ENVELOPE_SIZE,
    "policy_timeout": config.DEFAULT_POLICY_TIMEOUT,
    "lease": config.DEFAULT_LEASE,
    "enqueue_retry": config.DEFAULT_ENQUEUE_RETRY,
    "envelope_version": config.DEFAULT_ENVELOPE_VERSION,
    "accept_envelope_v1": config.DEFAULT_ACCEPT_ENVELOPE_V1,
    "batch_signatures": config.DEFAULT_BATCH_SIGNATURES,
    "timeout": config.DEFAULT_TIMEOUT,
    "retries": config.DEFAULT_RETRIES,
    "expires": config.DEFAULT_EXPIRES,
    "backoff": config.DEFAULT_BACKOFF,
    "max_backoff": config.DEFAULT_MAX_BACKOFF,
    "result_ttl": config.DEFAULT_RESULT_TTL,
}

WORKER_DEFAULTS = {
    "app": None,
    "broker": None,
    "log_level": "INFO",
    "log_format": "text",
    "queues": (),
    "concurrency": None,
    "processes": 1,
    "grace": config.DEFAULT_GRACE,
    "lease": None,
    "max_abandoned_threads": config.DEFAULT_MAX_ABANDONED_THREADS,
    "stall_warning": config.DEFAULT_STALL_WARNING,
    "health_file": None,
    "health_interval": config.DEFAULT_HEALTH_INTERVAL,
    "metrics_port": None,
    "metrics_address": "127.0.0.1",
    "events": False,
    "loop": "asyncio",
}


def test_app_defaults_are_the_documented_ones() -> None:
    assert msgspec.structs.asdict(AppSettings()) == APP_DEFAULTS


def test_worker_defaults_are_the_documented_ones_and_the_flags_defaults() -> None:
    assert msgspec.structs.asdict(WorkerSettings()) == WORKER_DEFAULTS
    args = build_parser().parse_args(["worker"])
    assert settings_from_flags(args) == WorkerSettings()


def test_every_option_has_help_text() -> None:
    for option in [*APP_OPTIONS, *WORKER_OPTIONS]:
        assert len(option.help) > 15, option.name


# -- validation, per field ---------------------------------------------------------------


def _bad_values(option: OptionInfo) -> list[Any]:
    """Values that break ``option``'s declared rule: a wrong type always, plus one per
    bound, choice list and name rule."""
    bad: list[Any] = [object()]
    if option.kind in (int, float):
        bad.append("10")
    if option.kind is float:
        bad += [float("nan"), float("inf")]
    if option.at_least is not None:
        bad.append(option.kind(option.at_least) - 1)
    if option.above is not None:
        bad.append(option.kind(option.above))
    if option.at_most is not None:
        bad.append(option.kind(option.at_most) + 1)
    if option.choices is not None:
        bad.append(3 if option.kind is int else "loud")
    if option.name_like:
        bad.append(("bad name!",) if option.kind is tuple else "bad name!")
    if option.kind is bool:
        bad.append(1)
    if not option.optional:
        bad.append(None)
    return bad


def _cases(cls: type[msgspec.Struct]) -> list[Any]:
    return [
        pytest.param(cls, o.name, value, id=f"{cls.__name__}.{o.name}={value!r}")
        for o in options_of(cls)
        for value in _bad_values(o)
    ]


@pytest.mark.parametrize(("cls", "name", "value"), [*_cases(AppSettings), *_cases(WorkerSettings)])
def test_a_bad_value_is_refused_naming_the_option(
    cls: type[msgspec.Struct], name: str, value: Any
) -> None:
    with pytest.raises(vaultq.ConfigurationError, match=rf"{cls.__name__}\.{name}\b") as info:
        cls(**{name: value})
    assert "docs/configuration.md" in str(info.value), "the message says where to look"
    # Decoding (Django settings, the supervisor's JSON) applies the same rule.
    if isinstance(value, bool | int | float | str | tuple) or value is None:
        with pytest.raises((vaultq.ConfigurationError, msgspec.ValidationError)):
            msgspec.convert({name: value}, cls)


def test_good_values_at_the_bounds_are_taken() -> None:
    AppSettings(clock_skew=0, enqueue_retry=0, retries=0, backoff=0, max_envelope_size=1024)
    WorkerSettings(grace=0, concurrency=1, health_interval=0.05, queues=("a-1", "b_2"))
    WorkerSettings(health_interval=3600, log_level="DEBUG", log_format="json")


def test_envelope_v1_needs_the_v1_window() -> None:
    AppSettings(envelope_version=1)
    with pytest.raises(vaultq.ConfigurationError, match="accept_envelope_v1=True"):
        AppSettings(envelope_version=1, accept_envelope_v1=False)


def test_a_broker_url_is_never_echoed_in_an_error() -> None:
    with pytest.raises(vaultq.ConfigurationError) as info:
        WorkerSettings(broker=b"redis://:hunter2@h/0")  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        WorkerSettings().concurrency = 3  # type: ignore[misc]


# -- the command line follows WorkerSettings, both ways ----------------------------------


def _worker_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    worker: argparse.ArgumentParser = sub.choices["worker"]
    return worker


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if not isinstance(a, argparse._HelpAction)}


def test_every_worker_setting_is_a_flag_and_every_flag_a_setting() -> None:
    actions = _option_actions(_worker_parser())
    assert set(actions) == {o.name for o in WORKER_OPTIONS}
    for option in WORKER_OPTIONS:
        action = actions[option.name]
        assert action.help == option.help
        if option.positional:
            assert action.option_strings == []
        else:
            assert action.option_strings == [option.flag]


# A valid command-line value for each field, and the value it must become.
SAMPLES: dict[str, tuple[str, Any]] = {
    "broker": ("sqlite:///x.db", "sqlite:///x.db"),
    "log_level": ("debug", "DEBUG"),
    "log_format": ("json", "json"),
    "queues": ("high,low", ("high", "low")),
    "concurrency": ("7", 7),
    "processes": ("3", 3),
    "grace": ("2.5", 2.5),
    "lease": ("9", 9.0),
    "max_abandoned_threads": ("4", 4),
    "stall_warning": ("0.5", 0.5),
    "health_file": ("/tmp/h", "/tmp/h"),
    "health_interval": ("2", 2.0),
    "metrics_port": ("9108", 9108),
    "metrics_address": ("0.0.0.0", "0.0.0.0"),
    "events": ("", True),  # a switch: the flag alone
    "loop": ("uvloop", "uvloop"),
}


def test_every_flag_reaches_the_settings() -> None:
    flags = {o.name: o.flag for o in WORKER_OPTIONS if not o.positional}
    assert set(SAMPLES) == set(flags), "a new option needs a sample here"
    argv = ["worker", "some.module"]
    for name, (text, _) in SAMPLES.items():
        argv += [str(flags[name]), text] if text else [str(flags[name])]
    settings = settings_from_flags(build_parser().parse_args(argv))
    assert settings.app == "some.module"
    for name, (_, value) in SAMPLES.items():
        assert getattr(settings, name) == value, name


def _has_rule(option: OptionInfo) -> bool:
    return option.kind in (int, float) or bool(option.choices) or option.name_like


def test_the_flags_without_a_rule_are_free_text() -> None:
    assert {
        o.name for o in WORKER_OPTIONS if o.flag and not _has_rule(o) and o.kind is not bool
    } == {"broker", "health_file", "metrics_address"}


@pytest.mark.parametrize(
    "option", [o for o in WORKER_OPTIONS if o.flag and _has_rule(o)], ids=lambda o: o.name
)
def test_a_bad_flag_value_is_a_usage_error(
    option: OptionInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [str(v) for v in _bad_values(option) if type(v) in (int, float)]
    texts += ["ten"] if option.kind in (int, float) else []
    texts += ["loud"] if option.choices else []
    texts += ["bad name!"] if option.name_like else []
    assert texts
    for text in texts:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["worker", "m", f"{option.flag}={text}"])
        assert info.value.code == 2
        assert f"argument {option.flag}:" in capsys.readouterr().err


def test_other_commands_share_the_worker_declarations() -> None:
    """``--broker``/``--log-level``/``--log-format`` of every command are the fields'."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    by_name = {o.name: o for o in WORKER_OPTIONS}
    for command in ("status", "enqueue", "check", "job"):
        actions = _option_actions(sub.choices[command])
        for name in ("broker", "log_level", "log_format"):
            assert actions[name].help == by_name[name].help


# -- the supervisor's children get the settings ------------------------------------------


def test_supervised_children_run_with_the_supervisors_settings(tmp_path: Path) -> None:
    health = tmp_path / "beat"
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db"})
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vaultq", "worker", "cli_apps:good"]
            + ["--processes", "2", "--concurrency", "3", "--queues", "q1,default"]
            + ["--grace", "1", "--health-file", str(health), "--log-format", "json"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 60
        # both children started, and the heartbeat file the supervisor resolved (one
        # file, shared) is being written while they run
        while log_path.read_text().count("vaultq worker ") < 2 or not health.exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0
    records = [msgspec.json.decode(line) for line in log_path.read_text().splitlines()]
    starts = [r["message"] for r in records if r["message"].startswith("vaultq worker ")]
    assert len(starts) == 2
    for line in starts:
        # concurrency, queues (not the app's own set) and the log format came through
        assert "app=cli-good" in line and "concurrency=3" in line and "queues=q1,default" in line


def test_a_child_refuses_settings_it_cannot_decode(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vaultq.cli_worker"],
        input=b'{"concurrency": 0, "app": "cli_apps:good"}',
        env=worker_env(),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert b"WorkerSettings.concurrency (--concurrency) must be at least 1" in out.stderr
    assert b"Traceback" not in out.stderr


# -- environment variables: read at the edges only ---------------------------------------


# Modules of the core allowed to look at os.environ, and why. Everything else reads the
# documented variables through vaultq.settings.environment(), called from the edges.
ENVIRON_READERS = {
    "vaultq/settings.py": "environment(): the one reader of the VAULTQ_* variables",
    "vaultq/runtime/isolation.py": "builds a child's environment without the secrets",
    "vaultq/runtime/health.py": "$XDG_RUNTIME_DIR, the OS's per-user runtime directory",
    "vaultq/operations.py": "$SUDO_USER names the operator in audit lines",
    "vaultq/keyring.py": "Keyring.from_env(var): the caller names the variable",
    "vaultq/cli_monitor.py": "the command line (an edge): the metrics supervisor's children",
    "vaultq/cli_dashboard.py": "the command line (an edge): $VAULTQ_DASHBOARD_USERS",
    "vaultq/metrics.py": "$PROMETHEUS_MULTIPROC_DIR, prometheus_client's own multiprocess switch",
}


def test_environment_variables_are_read_at_the_edges_only() -> None:
    readers = set()
    for path in (ROOT / "vaultq").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("vaultq/django/"):
            continue  # the Django edge: settings.VAULTQ, KEYS_ENV, DJANGO_SETTINGS_MODULE
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
            ):
                readers.add(rel)
    assert readers == set(ENVIRON_READERS), "update ENVIRON_READERS, saying why"


def test_environment_reads_the_documented_variables() -> None:
    env = environment(
        {
            "VAULTQ_BROKER": "redis://h/0",
            "VAULTQ_KEYS": "@/k",
            "VAULTQ_APP": "shop.jobs",
            "VAULTQ_HEALTH_FILE": "/run/h",
            "DJANGO_SETTINGS_MODULE": "",
        }
    )
    assert (env.broker, env.keys, env.app, env.health_file) == (
        "redis://h/0",
        "@/k",
        "shop.jobs",
        "/run/h",
    )
    assert env.django_settings is None, "empty means unset"
    assert AppSettings.from_env({"VAULTQ_BROKER": "redis://h/0"}).broker == "redis://h/0"
    assert AppSettings.from_env({"VAULTQ_BROKER": "redis://h/0"}, broker="x").broker == "x"


def test_vaultq_health_file_reaches_the_worker(tmp_path: Path) -> None:
    health = tmp_path / "env-beat"
    env = worker_env(
        {"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db", "VAULTQ_HEALTH_FILE": str(health)}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaultq", "worker", "cli_apps:good", "--health-interval", "0.1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not health.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# -- docs/configuration.md ---------------------------------------------------------------

DOC = (ROOT / "docs" / "configuration.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else len(DOC)]


def test_every_app_setting_is_documented() -> None:
    section = _section("## `vaultq.App(name, **options)`")
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert {o.name for o in APP_OPTIONS} <= documented


def test_every_worker_flag_is_documented() -> None:
    section = _section("## Worker")
    documented = set(re.findall(r"^\| `(--[\w-]+)", section, re.M))
    assert {o.flag for o in WORKER_OPTIONS if o.flag} == documented


def test_an_app_reads_the_environment_once_when_it_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VAULTQ_BROKER", f"sqlite:///{tmp_path}/env.db")
    keys = vaultq.Keyring.generate()
    monkeypatch.setenv("VAULTQ_KEYS", keys.to_json())
    app = vaultq.App("env-edge")
    monkeypatch.delenv("VAULTQ_KEYS")
    no_keys = vaultq.App("env-edge")
    # Changed after construction: each app keeps what it found when it was built.
    monkeypatch.setenv("VAULTQ_BROKER", f"sqlite:///{tmp_path}/other.db")
    monkeypatch.setenv("VAULTQ_KEYS", keys.to_json())
    assert app.broker_url.endswith("/env.db")
    assert app.keyring.signer_id == keys.signer_id and app.keyring_source == "$VAULTQ_KEYS"
    assert no_keys.keyring.signer_id != keys.signer_id
    assert no_keys.keyring_source == f"{tmp_path}/env.keys", "the embedded broker's key file"
    # Given values win over the environment.
    given = vaultq.App("env-edge", broker=f"sqlite:///{tmp_path}/given.db", keyring=keys)
    assert given.broker_url.endswith("/given.db") and given.keyring is keys
    from_settings = vaultq.App("s", settings=AppSettings(broker=f"sqlite:///{tmp_path}/s.db"))
    assert from_settings.broker_url.endswith("/s.db")


# -- AppSettings in App ------------------------------------------------------------------


def test_app_takes_a_settings_object_and_keywords_win(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    settings = AppSettings(broker=url, timeout=60, retries=2, lease=12, queue="work")
    app = vaultq.App("sets", settings=settings)
    assert app.settings is settings
    assert (app.default_queue, app.lease, app.task_defaults.timeout) == ("work", 12, 60)
    assert app.task_defaults.retries == 2 and app.broker_url == url
    both = vaultq.App("sets", settings=settings, retries=5, clock_skew=10)
    assert (both.settings.retries, both.settings.timeout, both.clock_skew) == (5, 60, 10)
    # The keyword form builds the same settings object.
    assert vaultq.App("kw", broker=url, timeout=60, retries=2, lease=12, queue="work").settings == (
        settings
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("timeout", 0), ("retries", -1), ("lease", 0), ("queue", "a b"), ("envelope_version", 3)],
)
def test_app_keywords_are_checked_by_the_settings(option: str, value: Any, tmp_path: Path) -> None:
    with pytest.raises(vaultq.ConfigurationError, match=rf"AppSettings\.{option}"):
        vaultq.App("bad", broker=f"sqlite:///{tmp_path}/q.db", **{option: value})


def test_configure_checks_and_refuses_the_broker(tmp_path: Path) -> None:
    app = vaultq.App("conf", broker=f"sqlite:///{tmp_path}/q.db")
    with pytest.raises(vaultq.ConfigurationError, match="set_broker"):
        app.configure(broker="sqlite:///x.db")
    with pytest.raises(vaultq.ConfigurationError, match="AppSettings.expires"):
        app.configure(expires=-1)
    assert app.settings == AppSettings(broker=f"sqlite:///{tmp_path}/q.db"), "unchanged"


# -- task options left unset: the app's default, through a sentinel ------------------------


class Nap(msgspec.Struct, frozen=True):
    seconds: float


def test_an_unset_task_option_follows_the_apps_default(tmp_path: Path) -> None:
    app = vaultq.App("unset", broker=f"sqlite:///{tmp_path}/q.db")

    @app.task(name="plain")
    def plain(job: Nap) -> None: ...

    @app.task(name="own", timeout=5, retries=1)
    def own(job: Nap) -> None: ...

    assert plain.overrides.timeout is vaultq.settings.UNSET
    assert plain.options.timeout == config.DEFAULT_TIMEOUT
    app.configure(timeout=60, retries=3, queue="later", result_ttl=10, backoff=0.5)
    # Defined before the change, and still follows it: "not given" was kept, not a copy.
    assert (plain.options.timeout, plain.options.retries, plain.queue) == (60, 3, "later")
    assert (plain.options.result_ttl, plain.options.backoff) == (10, 0.5)
    # What a task set itself stays.
    assert (own.options.timeout, own.options.retries, own.queue) == (5, 1, "later")


def test_a_task_default_changed_later_reaches_the_worker(tmp_path: Path) -> None:
    """End to end: the attempt's deadline is the app's timeout at run time."""
    import anyio
    from support.workers import running_worker

    app = vaultq.App(
        "unset-run", broker=f"sqlite:///{tmp_path}/q.db", keyring=vaultq.Keyring.generate()
    )

    @app.task(name="nap")
    async def nap(job: Nap) -> None:
        await anyio.sleep(job.seconds)

    app.configure(timeout=0.3)

    async def go() -> float:
        async with running_worker(app):
            handle = await nap.enqueue(Nap(30))
            began = time.monotonic()
            with pytest.raises(vaultq.JobTimedOut):
                await handle.result(timeout=20)
            return time.monotonic() - began

    took = anyio.run(go)
    assert took < 10, "stopped at the new default (0.3 s), not the old one (300 s)"


def test_an_invalid_mix_is_refused_when_the_task_is_defined(tmp_path: Path) -> None:
    app = vaultq.App("mix", broker=f"sqlite:///{tmp_path}/q.db", timeout=30)
    with pytest.raises(vaultq.TaskDefinitionError, match="max_timeout"):

        @app.task(name="t", max_timeout=10)
        def t(job: Nap) -> None: ...


# A valid non-default value for each App option (a new AppSettings field needs one).
APP_SAMPLES: dict[str, Any] = {
    "broker": "memory://samples",
    "queue": "work",
    "clock_skew": 5.0,
    "max_envelope_size": 4096,
    "policy_timeout": 1.5,
    "lease": 12.0,
    "enqueue_retry": 0.0,
    "envelope_version": 1,
    "accept_envelope_v1": False,
    "batch_signatures": True,
    "timeout": 60.0,
    "retries": 3,
    "expires": 600.0,
    "backoff": 0.5,
    "max_backoff": 30.0,
    "result_ttl": 100.0,
}


def test_every_app_setting_is_an_app_keyword_and_back() -> None:
    import inspect

    params = set(inspect.signature(vaultq.App.__init__).parameters)
    objects = {"self", "name", "settings", "keyring", "default_policy", "middleware"}
    assert params - objects == {o.name for o in APP_OPTIONS}
    assert set(APP_SAMPLES) == {o.name for o in APP_OPTIONS}
    for name, value in APP_SAMPLES.items():
        assert getattr(AppSettings(), name) != value, name
        app = vaultq.App("kw", **{name: value})
        assert getattr(app.settings, name) == value, name


def test_every_worker_setting_survives_the_trip_to_a_supervised_child() -> None:
    """What the supervisor writes on a child's stdin decodes to the same settings."""
    flags = {o.name: o.flag for o in WORKER_OPTIONS if not o.positional}
    argv = ["worker", "some.module"]
    for name, (text, _) in SAMPLES.items():
        argv += [str(flags[name]), text] if text else [str(flags[name])]
    settings = settings_from_flags(build_parser().parse_args(argv))
    for name, (_, value) in SAMPLES.items():
        assert getattr(settings, name) != getattr(WorkerSettings(), name), name
    encoded = msgspec.json.encode(settings)
    assert msgspec.json.decode(encoded, type=WorkerSettings) == settings


def _documented_defaults(section: str, key: str) -> dict[str, str]:
    """``{option: first backticked token of its default cell}`` for rows whose default
    cell starts with a backticked value."""
    found = {}
    for match in re.finditer(rf"^\| `({key})[^`]*` \| `([^`]+)`", section, re.M):
        found[match.group(1)] = match.group(2)
    return found


def _same(text: str, value: Any) -> bool:
    if isinstance(value, bool):
        return text == str(value)
    if isinstance(value, int | float):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if value is None:
        return text == "None"
    return text.strip('"') == str(value)


def test_the_documented_defaults_are_the_declared_ones() -> None:
    app_rows = _documented_defaults(_section("## `vaultq.App(name, **options)`"), r"\w+")
    by_name = {o.name: o for o in APP_OPTIONS}
    checked = [n for n in app_rows if n in by_name]
    assert len(checked) == len(APP_OPTIONS), "every App option's default is in the table"
    for name in checked:
        assert _same(app_rows[name], by_name[name].default), (name, app_rows[name])
    worker_rows = _documented_defaults(_section("## Worker"), r"--[\w-]+")
    by_flag = {o.flag: o for o in WORKER_OPTIONS if o.flag}
    for flag, text in worker_rows.items():
        if text.startswith("$"):
            continue  # an environment variable, then a rule: said in words
        assert _same(text, by_flag[flag].default), (flag, text)
    # Those given as a value (the others say "the App's", "none", "off" or a path rule).
    assert len(worker_rows) >= 9
