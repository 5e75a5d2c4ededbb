"""System checks fire on bad settings (``manage.py check`` and ``--deploy``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.test import override_settings
from vqhelpers import HERE, worker_env

from vaultq.keyring import Keyring


def ids(messages: list[Any]) -> set[str]:
    return {m.id for m in messages if m.id.startswith("vaultq.")}


def run(deploy: bool = False) -> set[str]:
    return ids(checks.run_checks(include_deployment_checks=deploy))


def settings_with(**over: Any) -> dict[str, Any]:
    base = {
        "APP_NAME": "checks",
        "BROKER_URL": os.environ["VQTEST_BROKER"],
        "KEYS_FILE": os.environ["VQTEST_KEYS"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "k.keys"
    path.write_text(Keyring.generate().to_json())
    path.chmod(0o600)
    return path


def test_good_settings_pass() -> None:
    with override_settings(VAULTQ=settings_with(DEFAULT_POLICY="vaultq.policy.allow_all")):
        assert run() == set()
        assert run(deploy=True) == set()


def test_keys_missing_or_readable(keyfile: Path, tmp_path: Path) -> None:
    with override_settings(VAULTQ=settings_with(KEYS_FILE=str(tmp_path / "nope.keys"))):
        assert "vaultq.E001" in run()
    keyfile.chmod(0o644)
    with override_settings(VAULTQ=settings_with(KEYS_FILE=str(keyfile))):
        assert "vaultq.E002" in run()
    keyfile.chmod(0o600)
    with override_settings(VAULTQ=settings_with(KEYS_FILE=str(keyfile))):
        assert "vaultq.E002" not in run()
    if os.geteuid() == 0:  # another user's key file (swapped in) is refused like the loader
        os.chown(keyfile, 65534, -1)
        try:
            with override_settings(VAULTQ=settings_with(KEYS_FILE=str(keyfile))):
                assert "vaultq.E002" in run()
        finally:
            os.chown(keyfile, 0, -1)
    # A shared broker and no keys anywhere.
    env = os.environ.pop("VAULTQ_KEYS", None)
    try:
        with override_settings(
            VAULTQ=settings_with(KEYS_FILE=None, BROKER_URL="redis://127.0.0.1:1/0")
        ):
            assert "vaultq.E001" in run()
        # The embedded broker makes its own key file: fine.
        with override_settings(VAULTQ=settings_with(KEYS_FILE=None, BROKER_URL="sqlite:///x.db")):
            assert "vaultq.E001" not in run()
    finally:
        if env is not None:
            os.environ["VAULTQ_KEYS"] = env
    keyfile.chmod(0o640)
    os.environ["VQTEST_CHECK_KEYS"] = f"@{keyfile}"
    try:
        with override_settings(VAULTQ=settings_with(KEYS_FILE=None, KEYS_ENV="VQTEST_CHECK_KEYS")):
            assert "vaultq.E002" in run()
    finally:
        del os.environ["VQTEST_CHECK_KEYS"]


def test_inline_keys_flagged_under_deploy() -> None:
    import msgspec

    inline = msgspec.json.decode(Keyring.generate().to_json())
    with override_settings(VAULTQ=settings_with(KEYS_FILE=None, KEYS=inline)):
        assert "vaultq.W005" not in run()
        assert "vaultq.W005" in run(deploy=True)


def test_broker_missing_and_plaintext_redis() -> None:
    saved = os.environ.pop("VAULTQ_BROKER", None)
    try:
        with override_settings(VAULTQ=settings_with(BROKER_URL=None)):
            assert "vaultq.W001" in run()
    finally:
        if saved is not None:
            os.environ["VAULTQ_BROKER"] = saved
    for url, flagged in [
        ("redis://10.1.2.3:6379/0", True),
        ("redis://cache.internal:6379/0", True),
        ("rediss://cache.internal:6380/0", False),
        ("redis://127.0.0.1:6379/0", False),
        ("redis://localhost:6379/0", False),
        ("unix:///run/redis.sock", False),
    ]:
        with override_settings(VAULTQ=settings_with(BROKER_URL=url)):
            assert ("vaultq.W002" in run(deploy=True)) is flagged, url
            assert "vaultq.W002" not in run()


def test_debug_in_worker() -> None:
    from django.apps import apps

    config = apps.get_app_config("vaultq")
    with override_settings(DEBUG=True):
        assert "vaultq.W003" not in run()
        config.worker_mode = True
        try:
            assert "vaultq.W003" in run()
        finally:
            config.worker_mode = False


def test_tasks_without_policy_under_deploy() -> None:
    with override_settings(VAULTQ=settings_with()):
        assert "vaultq.W004" not in run()
        found = [
            m for m in checks.run_checks(include_deployment_checks=True) if m.id == "vaultq.W004"
        ]
        assert found and "vqtestapp.tasks.add" in found[0].msg
        assert "vqtestapp.report" not in found[0].msg  # it has a policy
    with override_settings(VAULTQ=settings_with(DEFAULT_POLICY="vaultq.policy.allow_all")):
        assert "vaultq.W004" not in run(deploy=True)


def test_invalid_settings() -> None:
    with override_settings(VAULTQ=settings_with(CONCURRENCY="many")):
        assert "vaultq.E003" in run()
    with override_settings(VAULTQ=settings_with(NOT_A_SETTING=1)):
        assert "vaultq.E003" in run()


def test_manage_py_check_deploy_exits_nonzero(tmp_path: Path) -> None:
    env = worker_env(VQTEST_KEYS=str(tmp_path / "missing.keys"))
    proc = subprocess.run(
        [sys.executable, str(HERE / "manage.py"), "check", "--deploy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "vaultq.E001" in proc.stderr
    assert "vaultq.W004" in proc.stderr


def test_worker_command_warns_about_debug(workers: Any, queue: str) -> None:
    from vqhelpers import wait_for

    proc = workers.start("--queues", queue, "--processes", "2", VQTEST_DEBUG="1")
    wait_for(lambda: workers.log(proc).count("vaultq worker ") >= 2, 60, "two worker processes")
    log = workers.log(proc)
    assert "vaultq.W003" in log
    # once: not again by the app loader, nor by each of the two worker processes
    assert log.count("DEBUG=True") == 1, log
    assert proc.poll() is None


def test_cli_worker_for_django_warns_about_debug_once(workers: Any, queue: str) -> None:
    from vqhelpers import wait_for

    proc = workers.start("--queues", queue, "--processes", "2", cli=True, VQTEST_DEBUG="1")
    wait_for(lambda: workers.log(proc).count("vaultq worker ") >= 2, 60, "two worker processes")
    log = workers.log(proc)
    assert log.count("DEBUG=True in a vaultq process") == 1, log
    assert proc.poll() is None
