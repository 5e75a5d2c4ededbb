"""Settings of the test project (tests/django). Paths and broker come from VQTEST_* env vars
set by conftest.py, so worker subprocesses see the same database, broker and keys."""

from __future__ import annotations

import os
from importlib.util import find_spec

SECRET_KEY = "vaultq-tests-only"  # noqa: S105
DEBUG = os.environ.get("VQTEST_DEBUG") == "1"
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
LOGGING_CONFIG = None  # leave logging (and the rest of the test session) alone
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    *([] if find_spec("django.tasks") else ["django_tasks"]),
    "vaultq.django",
    "vaultq.django.dashboard",
    "vqtestapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "vqtestapp.urls"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["VQTEST_DB"],
        # Many worker threads write at once: wait for the lock, take it up front.
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
}

VAULTQ = {
    "APP_NAME": os.environ.get("VQTEST_APP", "vqtest"),
    "BROKER_URL": os.environ["VQTEST_BROKER"],
    "KEYS_FILE": os.environ["VQTEST_KEYS"],
    "TASK_MODULE": ["jobs", "tasks"],
    "CONCURRENCY": 8,
    "GRACE": 5,
    # A periodic job declared in settings (docs/scheduling.md); yearly, so the workers of
    # the other tests never see a tick (test_django_schedule.py drives its own clock).
    "SCHEDULE": {
        "new-year": {
            "task": "vqtestapp.beat",
            "cron": "0 0 1 1 *",
            "tz": "Europe/Paris",
            "payload": {"kind": "full"},
            "missed": "run_once",
        },
    },
}

TASKS = {
    "default": {
        "BACKEND": "vaultq.django.VaultqBackend",
        "QUEUES": ["default", "djq"],
        "OPTIONS": {
            "TASKS": {
                "vqtestapp.tasks.add": {"TIMEOUT": 30},
                "vqtestapp.tasks.runner_pid": {"ISOLATION": "process", "TIMEOUT": 60},
                "vqtestapp.tasks.unstored": {"STORE_RESULT": False},
                "vqtestapp.tasks.flaky": {
                    "RETRIES": 3,
                    "BACKOFF": 0.05,
                    "RETRY_ON": ["vqtestapp.tasks.Transient"],
                },
            },
            "RESULT_POLICY": "vqtestapp.tasks.READ_ANY_RESULT",
        },
    }
}
