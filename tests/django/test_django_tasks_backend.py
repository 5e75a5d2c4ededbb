"""Django's Tasks framework (django.tasks on Django 6, the django-tasks backport on 5.2)
on vaultq: @task + enqueue + a real worker + get_result."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from vqhelpers import queue_stats, wait_for

import vaultq
from vaultq.django import compat
from vaultq.errors import PayloadError


def untyped(x):  # type: ignore[no-untyped-def]
    return x


def star(*values: int) -> int:
    return sum(values)


def sneaky(x: int) -> int:
    """Registered in this process only: the worker never heard of it."""
    return x


def finished(task: Any, result_id: str, timeout: float = 60) -> Any:
    def poll() -> Any:
        result = task.get_result(result_id)
        return result if result.is_finished else None

    return wait_for(poll, timeout, f"task result {result_id}")


@pytest.fixture(scope="module")
def dj_worker() -> Any:
    from vqhelpers import Workers

    w = Workers()
    w.start("--queues", "default,djq", "--concurrency", "4", cli=True)
    yield w
    w.stop_all()


def signals_for(result_id: str) -> list[tuple[str, str]]:
    from vqtestapp.models import SignalLog

    return list(
        SignalLog.objects.filter(result_id=result_id).order_by("pk").values_list("name", "status")
    )


def test_backend_flags() -> None:
    backend = compat.task_backends["default"]
    assert type(backend).__name__ == "VaultqBackend"
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


def test_enqueue_run_get_result(dj_worker: Any) -> None:
    import os

    from vqtestapp.tasks import add

    result = add.enqueue(2, b=3)
    assert result.status == compat.TaskResultStatus.READY
    assert result.args == [2] and result.kwargs == {"b": 3}
    assert result.enqueued_at is not None
    done = finished(add, result.id)
    assert done.status == compat.TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert done.started_at is not None and done.finished_at >= done.started_at
    assert done.enqueued_at <= done.started_at
    assert done.worker_ids and done.attempts == 1
    assert done.errors == []
    result.refresh()
    assert result.return_value == 5
    # Signals: enqueued here, started/finished in the worker process.
    log = signals_for(result.id)
    assert log[0] == ("enqueued", "READY")
    assert ("started", "RUNNING") in log and ("finished", "SUCCESSFUL") in log
    from vqtestapp.models import SignalLog

    pids = set(SignalLog.objects.filter(result_id=result.id).values_list("pid", flat=True))
    assert os.getpid() in pids and len(pids) == 2


def test_isolation_and_store_result_from_options_in_a_worker(dj_worker: Any) -> None:
    """OPTIONS["TASKS"] ISOLATION="process" runs each attempt in its own child process;
    STORE_RESULT=False keeps the outcome and no value (issue 18: every task option)."""
    from vqtestapp.tasks import runner_pid, unstored

    first, second = runner_pid.enqueue(1), runner_pid.enqueue(2)
    pids = {finished(runner_pid, r.id).return_value for r in (first, second)}
    assert len(pids) == 2 and all(isinstance(p, int) for p in pids), pids
    assert not pids & {proc.pid for proc, _ in dj_worker.procs}
    done = finished(unstored, unstored.enqueue(7).id)
    assert done.status == compat.TaskResultStatus.SUCCESSFUL
    assert done.return_value is None


def test_async_task_and_aget_result(dj_worker: Any) -> None:
    from vqtestapp.tasks import greet

    async def go() -> Any:
        result = await greet.aenqueue("ada", times=2)
        for _ in range(600):
            got = await greet.aget_result(result.id)
            if got.is_finished:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError("greet did not finish")

    done = asyncio.run(go())
    assert done.status == compat.TaskResultStatus.SUCCESSFUL
    assert done.return_value == "hello ada hello ada"


def test_failing_task_errors_carry_class_path_not_values(dj_worker: Any) -> None:
    from vqtestapp.tasks import boom

    result = boom.enqueue(4242)
    done = finished(boom, result.id)
    assert done.status == compat.TaskResultStatus.FAILED
    (error,) = done.errors
    assert error.exception_class_path == "vqtestapp.tasks.BoomError"
    assert error.exception_class.__name__ == "BoomError"
    assert "in boom" in error.traceback
    assert "raise BoomError" in error.traceback
    assert "4242" not in error.traceback  # the value never appears; source lines may
    with pytest.raises(ValueError, match="failed"):
        _ = done.return_value
    assert ("finished", "FAILED") in signals_for(result.id)


def test_struct_args_context_and_defer(dj_worker: Any) -> None:
    from vqtestapp.tasks import Point, norm, with_context

    r1 = norm.enqueue(Point(3, 4))
    r2 = norm.enqueue({"x": 6, "y": 8})  # converted strictly into Point
    r3 = with_context.enqueue(x=7)
    assert finished(norm, r1.id).return_value == 5.0
    assert finished(norm, r2.id).return_value == 10.0
    ctx = finished(with_context, r3.id).return_value
    assert ctx == {"attempt": 1, "id": r3.id, "x": 7}

    from vqtestapp.tasks import add

    when = timezone.now() + timedelta(seconds=1.5)
    deferred = add.using(run_after=when).enqueue(1)
    assert add.get_result(deferred.id).status == compat.TaskResultStatus.READY
    done = finished(add, deferred.id)
    assert done.return_value == 2
    assert done.started_at >= when - timedelta(milliseconds=100)


def test_wrong_types_raise_at_enqueue() -> None:
    from vqtestapp.tasks import Point, add, norm

    with pytest.raises(PayloadError, match=r"\$\.a"):
        add.enqueue("2", 3)
    with pytest.raises(PayloadError):
        add.enqueue(1.5)
    with pytest.raises(PayloadError):
        add.enqueue(1, c=2)
    with pytest.raises(PayloadError, match=r"\$\.p\.y"):
        norm.enqueue({"x": 1, "y": "2"})
    with pytest.raises(PayloadError):
        norm.enqueue(Point(1, 2), 3)


def test_invalid_task_definitions() -> None:
    with pytest.raises(compat.InvalidTask, match="annotate parameter 'x'"):
        compat.task(untyped)
    with pytest.raises(compat.InvalidTask, match=r"\*args"):
        compat.task(star)
    with pytest.raises(compat.InvalidTask, match="priority"):
        compat.task(priority=500)(sneaky)  # Django's range is -100..100


def test_enqueue_on_commit_option() -> None:
    from vqtestapp.tasks import add

    later = add.using(run_after=timezone.now() + timedelta(hours=1))
    base = queue_stats("default").delayed
    with transaction.atomic():
        kept = later.enqueue(1)
        assert queue_stats("default").delayed == base  # nothing before the commit
    assert queue_stats("default").delayed == base + 1
    assert add.get_result(kept.id).status == compat.TaskResultStatus.READY
    with transaction.atomic():
        later.enqueue(2)
        transaction.set_rollback(True)
    assert queue_stats("default").delayed == base + 1  # nothing on rollback


def test_unregistered_task_is_rejected_and_unknown_ids(dj_worker: Any) -> None:
    sneaky_task = compat.task(sneaky)
    result = sneaky_task.enqueue(1)
    done = finished(sneaky_task, result.id)
    assert done.status == compat.TaskResultStatus.FAILED
    assert done.errors[0].exception_class_path == "vaultq.errors.UnknownTask"
    with pytest.raises(compat.TaskResultDoesNotExist):
        sneaky_task.get_result("0" * 32 + "-" + "f" * 10)
    with pytest.raises(compat.TaskResultDoesNotExist):
        sneaky_task.get_result("not-an-id")


def test_django_view_enqueues_with_acting_principal(dj_worker: Any) -> None:
    from django.contrib.auth.models import User
    from django.test import Client
    from vqtestapp.tasks import add

    from vaultq.django import acting_as, get_app
    from vaultq.errors import AuthorizationDenied

    user = User.objects.create_user("tasks-view-user")
    client = Client()
    client.force_login(user)
    resp = client.get("/add/", {"a": 40, "b": 2})
    assert resp.status_code == 200
    result_id = resp.json()["id"]
    # Results are read as a principal: the user who enqueued it reads it, nobody else.
    with acting_as(user):
        assert finished(add, result_id).return_value == 42
    with pytest.raises(AuthorizationDenied):
        add.get_result(result_id)  # no principal
    with (
        acting_as(User.objects.create_user("tasks-view-other")),
        pytest.raises(AuthorizationDenied),
    ):
        add.get_result(result_id)
    # RESULT_POLICY lets staff read results that are not theirs.
    with acting_as(vaultq.Principal("user:auditor", roles={"staff"})):
        assert add.get_result(result_id).return_value == 42
    job_id = result_id.partition("-")[0]
    assert get_app().job(job_id).status_sync() == "succeeded"


class Transient(Exception):
    pass


def retried(n: int) -> int:
    return n


def test_every_task_option_is_accepted_in_options() -> None:
    """BACKOFF (refused before: ``unknown field BACKOFF``) and the other task options,
    backend-wide and per task; RETRY_ON/DONT_RETRY_ON are dotted exception paths."""
    from types import SimpleNamespace

    from django.core.exceptions import ImproperlyConfigured

    from vaultq.django.apps import get_config
    from vaultq.django.backend import VaultqBackend

    path = f"{__name__}.retried"
    backend = VaultqBackend(
        "retrying",
        {
            "QUEUES": ["default"],
            "OPTIONS": {
                "RETRIES": 2,
                "BACKOFF": 2.0,
                "MAX_BACKOFF": 60,
                "RETRY_ON": [f"{__name__}.Transient", "builtins.ConnectionError"],
                "DONT_RETRY_ON": ["builtins.ConnectionResetError"],
                "RETRY_ON_TIMEOUT": True,
                "RESULT_TTL": 600,
                "MAX_TIMEOUT": 400,
                "STORE_RESULT": False,
                "MAX_CONCURRENCY": 3,
                "TASKS": {
                    path: {
                        "BACKOFF": 0.5,
                        "RETRIES": 4,
                        "RESULT_TTL": 60,
                        "ISOLATION": "process",
                        "RATE_LIMIT": "10/m",
                    }
                },
            },
        },
    )
    fake = SimpleNamespace(func=retried, queue_name="default", takes_context=False)
    binding = backend._register(get_config(), fake, path)
    try:
        opts = binding.vaultq_task.options
        assert (opts.retries, opts.backoff, opts.max_backoff) == (4, 0.5, 60)
        assert opts.retry_on == (Transient, ConnectionError)
        assert opts.dont_retry_on == (ConnectionResetError,)
        assert opts.retry_on_timeout and opts.result_ttl == 60 and opts.max_timeout == 400
        assert opts.store_result is False and opts.isolation == "process"
        task = binding.vaultq_task
        assert (task.max_concurrency, task.rate_limit) == (3, "10/m")
        # The verdict is taken in the binding, where the exception class is known.
        assert binding._raised(Transient("x")).retry is True
        assert binding._raised(ConnectionResetError()).retry is False
        assert binding._raised(ValueError()).retry is False
    finally:
        get_config().bindings.pop(path, None)
        get_config().app._tasks.pop(path, None)

    with pytest.raises(ImproperlyConfigured, match="not an exception class"):
        VaultqBackend("bad", {"OPTIONS": {"RETRY_ON": ["builtins.len"]}})._register(
            get_config(), fake, path
        )
    with pytest.raises(ImproperlyConfigured, match="BACKOF"):
        VaultqBackend("bad", {"OPTIONS": {"BACKOF": 1}})


def test_every_app_task_option_has_a_key_in_options() -> None:
    """Each option of ``@app.task`` can be set in the backend's OPTIONS, backend-wide and
    per task (issue 18: BACKOFF was refused; STORE_RESULT and ISOLATION were missing).
    Left out: ``name`` (the module path), ``queue`` (Django's ``queue_name``), ``unique``
    ``unique_for`` and ``limit_key`` (functions of the payload, not settings)."""
    import inspect

    from vaultq import App
    from vaultq.django.backend import BackendOptions, TaskSettings

    options = set(inspect.signature(App.task).parameters) - {
        "self",
        "fn",
        "name",
        "queue",
        "unique",
        "unique_for",
        "limit_key",
    }
    assert "backoff" in options and "isolation" in options
    assert options - set(TaskSettings.__struct_fields__) == set()
    assert options - set(BackendOptions.__struct_fields__) == set()


def test_secret_arguments_reach_the_task_and_stay_masked(dj_worker: Any) -> None:
    """Secret arguments used to fail at enqueue (TaskResult.args could not hold them);
    the producer-side TaskResult now shows them masked, the task gets the value."""
    from vqtestapp.tasks import Charge, charge, charge_struct

    from vaultq import Secret

    r = charge.enqueue(Secret("card-4242"), amount=2)
    assert r.args == ["Secret('***')"]
    assert "card-4242" not in repr(r.args) + repr(r.kwargs)
    assert finished(charge, r.id).return_value == 18
    r = charge_struct.enqueue(Charge(3, Secret("42")))
    assert "42" not in repr(r.args)
    assert finished(charge_struct, r.id).return_value == 6
    with pytest.raises(PayloadError, match=r"\$\.card.*Expected `Secret`"):
        charge.enqueue(12)


def test_payload_errors_do_not_quote_the_argument() -> None:
    from vqtestapp.tasks import pick

    with pytest.raises(PayloadError) as info:
        pick.enqueue("SECRET-level-7f3a")
    assert "SECRET-level-7f3a" not in str(info.value)
    assert info.value.field == "$.level"


def test_exception_class_is_never_imported_on_a_results_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TaskError.exception_class imports exception_class_path. It used to be the
    error_type a result carried, which any worker (under split trust: any holder of an
    encryption key) writes: reading a failed result could import any module."""
    from vaultq.django.backend import _task_error, exception_path
    from vaultq.envelope import ResultBody

    marker = tmp_path / "imported"
    (tmp_path / "vq_side_effect.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Boom(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    body = ResultBody(status="failed", error_type="vq_side_effect.Boom", error="x")
    error = _task_error(body, task_module="vqtestapp.tasks", allowed=frozenset())
    assert error.exception_class_path == "vaultq.errors.JobFailed"
    assert error.exception_class.__name__ == "JobFailed"
    assert "vq_side_effect.Boom" in error.traceback  # still named, as text
    assert not marker.exists()
    allowed: frozenset[str] = frozenset()
    assert exception_path("os.system", task_module="os", allowed=allowed).endswith("JobFailed")
    assert exception_path("builtins.print", task_module="x", allowed=allowed).endswith("JobFailed")
    assert exception_path("ValueError", task_module="x", allowed=allowed) == "builtins.ValueError"
    assert exception_path("vaultq.JobTimedOut", task_module="x", allowed=allowed) == (
        "vaultq.errors.JobTimedOut"
    )
    boom = "vqtestapp.tasks.BoomError"
    assert exception_path(boom, task_module="vqtestapp.tasks", allowed=allowed) == boom
    assert exception_path(boom, task_module="other.tasks", allowed=allowed).endswith("JobFailed")
    # an operator may allow more (EXCEPTION_CLASSES in the backend's OPTIONS)
    listed = frozenset({"vq_side_effect.Boom"})
    assert exception_path("vq_side_effect.Boom", task_module="x", allowed=listed) == (
        "vq_side_effect.Boom"
    )
    assert not marker.exists()


def test_retry_options_through_a_real_worker(dj_worker: Any) -> None:
    """OPTIONS["TASKS"] RETRY_ON/RETRIES/BACKOFF, and vaultq.Fatal, in a worker process."""
    from vqtestapp.tasks import flaky

    transient, other, fatal = (flaky.enqueue(mode) for mode in ("transient", "other", "fatal"))
    done = finished(flaky, transient.id)
    assert done.status == compat.TaskResultStatus.SUCCESSFUL
    assert done.return_value == 2
    assert done.attempts == 2
    for result, error in ((other, "builtins.ValueError"), (fatal, "vaultq.errors.Fatal")):
        done = finished(flaky, result.id)
        assert done.status == compat.TaskResultStatus.FAILED
        assert done.attempts == 1
        assert done.errors[-1].exception_class_path == error
