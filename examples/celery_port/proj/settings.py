"""Settings of Celery's Django example, ported to vaultq. Development only (DEBUG, a fixed
SECRET_KEY). The Celery lines this replaces are in the comments."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "vaultq.django",  # Celery: proj/celery.py + `from .celery import app` in proj/__init__.py
    # The project package is an app too, so that proj/jobs.py (Celery's proj/celery.py
    # debug_task) is autodiscovered like demoapp/tasks.py.
    "proj",
    "demoapp",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "proj.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}

# Celery:
#   CELERY_BROKER_URL = "amqp://guest:guest@localhost"
#   CELERY_RESULT_BACKEND = "django-db"
#   CELERY_ACCEPT_CONTENT = ["json"]; CELERY_TASK_SERIALIZER = "json"
VAULTQ = {
    "APP_NAME": "proj",
    # The embedded broker: one host, no server; it keeps results too (no result backend)
    # and writes a 0600 key file (vaultq.keys) beside the database on first use. For Redis:
    #   "BROKER_URL": "redis://127.0.0.1:6379/1", "KEYS_FILE": BASE_DIR / "vaultq.keys"
    # (create it with `vaultq keys generate --out vaultq.keys`).
    "BROKER_URL": os.environ.get("VAULTQ_BROKER", f"sqlite:///{BASE_DIR / 'vaultq.db'}"),
    "CONCURRENCY": 4,
}
