"""Envelope v1: seal and open jobs and results. Pure functions, no I/O.

STUB: the security-core helper fills this in. The names and signatures below are the
contract other modules code against.
"""

from __future__ import annotations

from collections.abc import Container

import msgspec

from vaultq.keyring import Keyring
from vaultq.principal import Principal

__all__ = [
    "Header",
    "JobBody",
    "JobMeta",
    "OpenedJob",
    "ResultBody",
    "new_job_id",
    "open_job",
    "open_result",
    "seal_job",
    "seal_result",
]

VERSION = 1


class Header(msgspec.Struct, array_like=True, frozen=True):
    version: int
    job_id: str
    app: str
    task: str
    queue: str
    issued_at: int
    not_before: int
    expires_at: int
    key_id: str
    signer_id: str


class JobMeta(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    parent_id: str | None = None
    trace: dict[str, str] | None = None
    timeout: float | None = None
    """Per-enqueue attempt timeout override (seconds), capped by the task's max_timeout."""


class JobBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    payload: msgspec.Raw
    principal: Principal | None = None
    meta: JobMeta = JobMeta()


class OpenedJob(msgspec.Struct, frozen=True):
    header: Header
    body: JobBody


class ResultBody(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    status: str
    value: msgspec.Raw | None = None
    error_type: str | None = None
    error: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None


def new_job_id(now: float | None = None) -> str:
    raise NotImplementedError


def seal_job(
    keyring: Keyring,
    *,
    job_id: str,
    app: str,
    task: str,
    queue: str,
    payload: bytes,
    principal: Principal | None,
    meta: JobMeta,
    issued_at: float,
    not_before: float,
    expires_at: float,
) -> bytes:
    raise NotImplementedError


def open_job(
    data: bytes,
    keyring: Keyring,
    *,
    app: str,
    tasks: Container[str],
    now: float,
    queue: str | None = None,
    job_id: str | None = None,
    skew: float = 60.0,
    max_size: int = 1024 * 1024,
) -> OpenedJob:
    raise NotImplementedError


def seal_result(keyring: Keyring, header: Header, body: ResultBody, *, now: float) -> bytes:
    raise NotImplementedError


def open_result(
    data: bytes, keyring: Keyring, *, app: str, job_id: str, max_size: int = 1024 * 1024
) -> ResultBody:
    raise NotImplementedError
