"""The `vaultq` command line: help texts, app loading, status, dead letters, check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.workers import ROOT, worker_env

import vaultq
import vaultq.config
from vaultq.cli import build_parser, main
from vaultq.loader import load_app


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vaultq", *args],
        env=env or worker_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_explains_every_command() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("worker", "enqueue", "cancel", "status", "dead", "keys", "check"):
        assert command in out.stdout
    assert "VAULTQ_BROKER" in out.stdout and "VAULTQ_KEYS" in out.stdout
    worker = run("worker", "--help").stdout
    for flag in ("--queues", "--concurrency", "--processes", "--broker", "--grace", "--log-level"):
        assert flag in worker
    assert "default 10" in worker


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: vaultq" in capsys.readouterr().out


def test_loader_finds_the_single_app_or_asks() -> None:
    app = load_app("cli_apps")
    assert app.name == "cli-good"
    assert app.import_spec == "cli_apps:good"
    assert load_app("cli_apps:good") is app
    with pytest.raises(vaultq.ConfigurationError, match="cli_two_apps:first, cli_two_apps:second"):
        load_app("cli_two_apps")
    with pytest.raises(vaultq.ConfigurationError, match="not a vaultq.App"):
        load_app("cli_apps:Ping")
    with pytest.raises(vaultq.ConfigurationError, match="no such module"):
        load_app("no_such_module_anywhere")


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    out = run("worker", "no_such_module_anywhere", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("vaultq: error: cannot import 'no_such_module_anywhere'")
    assert "Traceback" not in out.stderr


def test_enqueue_unknown_task_lists_the_known_ones(tmp_path: Path) -> None:
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db"})
    out = run("enqueue", "cli_apps", "nope", "{}", env=env)
    assert out.returncode == 2
    assert "cli.open, cli.ping" in out.stderr


def test_status_dead_and_cancel_on_the_embedded_broker(tmp_path: Path) -> None:
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db"})
    enq = run("enqueue", "cli_apps", "cli.open", '{"n": 1}', "--delay", "60", env=env)
    assert enq.returncode == 0, enq.stderr
    job_id = enq.stdout.strip()
    status = run("status", "cli_apps", env=env)
    assert status.returncode == 0
    assert "default" in status.stdout and "delayed" in status.stdout
    row = [line for line in status.stdout.splitlines() if line.startswith("default")][0]
    assert row.split()[1:] == ["0", "1", "0", "0"]
    cancel = run("cancel", job_id, "--app", "cli_apps", env=env)  # the deprecated form
    assert cancel.returncode == 0
    assert "was pending: cancelled" in cancel.stdout
    assert "--app is deprecated" in cancel.stderr
    dead = run("dead", "list", "cli_apps", env=env)
    assert f"{job_id}  attempt=1  reason=cancelled" in dead.stdout


def test_enqueue_denied_by_policy_at_once(tmp_path: Path) -> None:
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db"})
    out = run("enqueue", "cli_apps", "cli.ping", '{"n": 1}', env=env)
    assert out.returncode == 2
    assert "denied" in out.stderr and "nothing was enqueued" in out.stderr
    ok = run("enqueue", "cli_apps", "cli.ping", '{"n": 1}', "--principal", "user:1", env=env)
    assert ok.returncode == 0, ok.stderr


def test_check_deploy_flags_unsafe_settings(tmp_path: Path) -> None:
    keys = tmp_path / "vaultq.keys"
    vaultq.Keyring.generate().save(keys)
    env = worker_env({"VAULTQ_BROKER": "redis://10.1.2.3:6379/0", "VAULTQ_KEYS": f"@{keys}"})
    out = run("check", "cli_apps", "--deploy", env=env)
    assert out.returncode == 1
    assert "VQ202" in out.stdout and "rediss://" in out.stdout
    assert "VQ401 task cli.open has no explicit policy" in out.stdout.replace(":", "")
    assert "cli.ping" not in out.stdout
    keys.chmod(0o644)
    out = run("check", "cli_apps", env=env)
    assert "VQ102" in out.stdout
    keys.chmod(0o600)
    fine = run("check", "cli_apps", env=worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db"}))
    assert fine.returncode == 0, fine.stdout


def test_check_reports_jobs_queued_under_a_revoked_key(tmp_path: Path) -> None:
    """After `vaultq keys revoke`, `vaultq check` says how many queued jobs name the
    revoked key (workers will dead-letter them), so the operator can re-enqueue."""
    keys = tmp_path / "vaultq.keys"
    vaultq.Keyring.generate().save(keys)
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db", "VAULTQ_KEYS": f"@{keys}"})
    for n in (1, 2):
        assert run("enqueue", "cli_apps", "cli.open", f'{{"n": {n}}}', env=env).returncode == 0
    clean = run("check", "cli_apps", env=env)
    assert "VQ104" not in clean.stdout, clean.stdout + clean.stderr
    signer = vaultq.Keyring.from_file(keys).signer_id
    assert signer is not None
    assert run("keys", "revoke", str(keys), signer, env=env).returncode == 0
    out = run("check", "cli_apps", env=env)
    assert out.returncode == 0, out.stdout + out.stderr  # a warning, not an error
    assert (
        f"VQ104: 2 job(s) queued on 'default' are sealed or signed with revoked key(s) {signer}"
        in out.stdout
    )
    assert "rejected:revoked_key" in out.stdout
    # without a database there is nothing queued, and check does not create one
    other = worker_env(
        {"VAULTQ_BROKER": f"sqlite:///{tmp_path}/none.db", "VAULTQ_KEYS": f"@{keys}"}
    )
    assert "VQ104" not in run("check", "cli_apps", env=other).stdout
    assert not (tmp_path / "none.db").exists()


def test_check_flags_a_key_file_another_user_owns(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    keys = tmp_path / "vaultq.keys"
    vaultq.Keyring.generate().save(keys)
    os.chown(keys, 65534, -1)
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{tmp_path}/q.db", "VAULTQ_KEYS": f"@{keys}"})
    out = run("check", "cli_apps", env=env)
    assert out.returncode == 1
    assert "VQ102" in out.stdout and "owned by uid 65534" in out.stdout


def test_parser_defaults_match_config() -> None:
    args = build_parser().parse_args(["worker", "x"])
    assert args.concurrency is None  # the Worker picks it from the app's tasks
    assert args.grace == vaultq.config.DEFAULT_GRACE


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--concurrency", "0", "at least 1"),
        ("--concurrency", "ten", "not a whole number"),
        ("--processes", "-2", "at least 1"),
        ("--grace", "-1", "seconds >= 0"),
        ("--lease", "0", "more than 0 seconds"),
        ("--grace", "nan", "seconds >= 0"),
    ],
)
def test_worker_flags_are_validated(flag: str, value: str, says: str) -> None:
    out = run("worker", "cli_apps", f"{flag}={value}")
    assert out.returncode == 2
    assert says in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", [["status"], ["dead", "list"], ["cancel", "0" * 32, "--app"]])
def test_read_only_commands_do_not_create_a_database(command: list[str], tmp_path: Path) -> None:
    db = tmp_path / "typo" / "vaultq.db"
    env = worker_env({"VAULTQ_BROKER": f"sqlite:///{db}"})
    out = run(*command, "cli_apps", env=env)
    assert out.returncode == 2
    assert "no vaultq database at" in out.stderr
    assert not db.parent.exists()


def test_max_abandoned_threads_flag_reaches_the_worker() -> None:
    args = build_parser().parse_args(["worker", "x", "--max-abandoned-threads", "3"])
    assert args.max_abandoned_threads == 3
    assert "--max-abandoned-threads" in run("worker", "--help").stdout
    out = run("worker", "cli_apps", "--max-abandoned-threads=0")
    assert out.returncode == 2 and "at least 1" in out.stderr


def test_a_module_builds_its_app_through_the_loader_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that defines ``vaultq_load_app(attr)`` builds its App itself (what
    vaultq.django does after django.setup()); the loader knows no framework."""
    (tmp_path / "hooked_app.py").write_text(
        "import vaultq\n"
        "calls = []\n"
        "def vaultq_load_app(attr):\n"
        "    calls.append(attr)\n"
        "    return vaultq.App('hooked', broker='memory://hooked')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = load_app("hooked_app:main")
    assert app.name == "hooked"
    import hooked_app  # type: ignore[import-not-found]

    assert hooked_app.calls == ["main"]
    (tmp_path / "bad_hook.py").write_text("def vaultq_load_app(attr):\n    return 42\n")
    with pytest.raises(vaultq.ConfigurationError, match="did not return a vaultq.App"):
        load_app("bad_hook")
