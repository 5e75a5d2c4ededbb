"""Settings of the vaultq Django example. Development only (DEBUG, a fixed SECRET_KEY)."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Django 6 has django.tasks built in; Django 5.2 uses the django-tasks backport.
    *([] if find_spec("django.tasks") else ["django_tasks"]),
    "vaultq.django",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "site_config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}
LOGIN_URL = "/admin/login/"

VAULTQ = {
    "APP_NAME": "shop",
    # The embedded broker: one host, no server to run. It writes a 0600 key file
    # (vaultq.keys) beside the database on first use. For Redis:
    #   "BROKER_URL": "redis://127.0.0.1:6379/0", "KEYS_FILE": BASE_DIR / "vaultq.keys"
    # (create it with `vaultq keys generate --out vaultq.keys`).
    "BROKER_URL": os.environ.get("VAULTQ_BROKER", f"sqlite:///{BASE_DIR / 'vaultq.db'}"),
    "DEFAULT_POLICY": "shop.policies.AUTHENTICATED",
    "CONCURRENCY": 4,
}

TASKS = {
    "default": {
        "BACKEND": "vaultq.django.VaultqBackend",
        "QUEUES": ["default"],
        "OPTIONS": {
            "TASKS": {"shop.tasks.order_total": {"POLICY": "shop.policies.CAN_VIEW_ORDERS"}},
            # get_result: a user reads their own tasks' results; staff read any.
            "RESULT_POLICY": "shop.policies.READ_ANY_RESULT",
        },
    }
}
