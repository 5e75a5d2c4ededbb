"""The vaultq error tree.

Every error vaultq raises on purpose derives from :class:`VaultqError`, and every
message says what to do next. No message, ``repr`` or log line built here contains a
payload value, plaintext, a principal's attributes or key bytes.

::

    VaultqError
    ├── ConfigurationError           bad settings, broker URL, app lookup
    │   ├── TaskDefinitionError      a task cannot be registered as written
    │   └── InvalidArgument          an argument out of range (also a ValueError)
    ├── KeyringError                 a keyring cannot be loaded, saved or used
    │   └── InsecureKeyFile          key file others could read or replace
    ├── PayloadError                 wrong payload type, field or value shape
    ├── AuthorizationDenied          a policy said no (at enqueue)
    ├── DuplicateJob                 a custom job id is queued, running or recently finished
    ├── EnvelopeError                an envelope failed to open: the job is REJECTED
    │   ├── EnvelopeTooLarge
    │   ├── UnsupportedVersion
    │   ├── MalformedEnvelope
    │   ├── WrongDestination         sealed for another app, queue or job id
    │   ├── UnknownTask
    │   ├── EnvelopeExpired
    │   ├── EnvelopeNotYetValid
    │   ├── UntrustedSigner
    │   ├── RevokedKey           signed or sealed with a revoked key id
    │   ├── BadSignature
    │   ├── UnknownKey
    │   ├── DecryptionFailed
    │   └── Replayed
    ├── Retry                        raised by a task: run me again (counts against retries)
    ├── Fatal                        raised by a task: fail now, never retry
    ├── TaskRaised                   an attempt failed; its exception is reported, not at hand
    ├── BrokerError                  the broker failed or is unreachable
    │   └── BrokerUnavailable
    └── JobError                     a job ended without a result (from handle.result())
        ├── JobFailed
        ├── JobDenied
        ├── JobTimedOut
        ├── JobRejected
        ├── JobExpired
        ├── JobCancelled
        │   └── DependencyFailed     depends_on=: a job it waited for did not succeed
        └── ResultUnavailable        succeeded, value not stored (store_result=False)

Waiting for a result longer than asked raises the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

__all__ = [
    "AuthorizationDenied",
    "BadSignature",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DecryptionFailed",
    "DependencyFailed",
    "DuplicateJob",
    "EnvelopeError",
    "EnvelopeExpired",
    "EnvelopeNotYetValid",
    "EnvelopeTooLarge",
    "Fatal",
    "InsecureKeyFile",
    "InvalidArgument",
    "JobCancelled",
    "JobDenied",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobRejected",
    "JobTimedOut",
    "KeyringError",
    "MalformedEnvelope",
    "PayloadError",
    "Replayed",
    "ResultUnavailable",
    "Retry",
    "RevokedKey",
    "TaskDefinitionError",
    "TaskRaised",
    "UnknownKey",
    "UnknownTask",
    "UnsupportedVersion",
    "UntrustedSigner",
    "VaultqError",
    "WorkflowRefused",
    "WrongDestination",
]


class VaultqError(Exception):
    """Root of every error vaultq raises on purpose."""


class ConfigurationError(VaultqError):
    """Settings, broker URL or app lookup are wrong; the message names the setting."""


class TaskDefinitionError(ConfigurationError):
    """A task function cannot be registered as written (annotations, name, options)."""


class InvalidArgument(ConfigurationError, ValueError):
    """An argument is out of its range (``Worker(concurrency=0)``, a pool size, an
    envelope version). A ``ValueError`` too, for callers that caught the builtin."""


class KeyringError(VaultqError):
    """A keyring cannot be loaded, parsed, saved or used for the asked operation."""


class InsecureKeyFile(KeyringError):
    """A key file others could read or replace: owned by another user (not root),
    accessible by group or others, or under a directory they can write to. The message
    says what to ``chmod``/``chown`` (``docs/keys.md``)."""


class PayloadError(VaultqError):
    """A payload or result does not match its declared type.

    ``field`` is the JSON path of the offending field (``$.order_id``) when known.
    The message never contains the value itself.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AuthorizationDenied(VaultqError):
    """A policy refused the job at enqueue; nothing was enqueued."""

    def __init__(self, message: str, *, task: str = "", policy: str = "") -> None:
        super().__init__(message)
        self.task = task
        self.policy = policy


class WorkflowRefused(AuthorizationDenied):
    """A worker refused to move a workflow forward: the continuation it was asked to
    enqueue is not the step the producer-signed plan names (another task, job id,
    workflow or principal). Audited; nothing was enqueued (``docs/workflows.md``)."""


class EnvelopeError(VaultqError):
    """An envelope failed to open. The job is REJECTED: never run, never retried.

    ``reason`` is a short stable code used in dead letters and audit lines.
    """

    reason = "rejected"


class EnvelopeTooLarge(EnvelopeError):
    """The envelope is over the app's ``max_envelope_size``: refused before parsing."""

    reason = "too_large"


class UnsupportedVersion(EnvelopeError):
    """The envelope's format version is not one this app reads (see ``accept_envelope_v1``)."""

    reason = "unsupported_version"


class MalformedEnvelope(EnvelopeError):
    """The envelope is not well-formed (framing, JSON, field types or ranges)."""

    reason = "malformed"


class WrongDestination(EnvelopeError):
    """The envelope was sealed for another app, queue, task or job id than where it was found."""

    reason = "wrong_destination"


class UnknownTask(EnvelopeError):
    """The envelope names a task this worker has not registered."""

    reason = "unknown_task"


class EnvelopeExpired(EnvelopeError):
    """The job's ``expires_at`` (plus the allowed clock skew) has passed."""

    reason = "expired"


class EnvelopeNotYetValid(EnvelopeError):
    """The job was issued (or may start) further in the future than the clock skew allows."""

    reason = "not_yet_valid"


class UntrustedSigner(EnvelopeError):
    """The envelope's signer is not among the keyring's trusted signers."""

    reason = "untrusted_signer"


class RevokedKey(EnvelopeError):
    """The envelope names a signing or encryption key id the keyring has revoked
    (``Keyring.revoke``, ``vaultq keys revoke``): refused whatever its signature."""

    reason = "revoked_key"


class BadSignature(EnvelopeError):
    """The signature does not verify: the envelope was altered or forged."""

    reason = "bad_signature"


class UnknownKey(EnvelopeError):
    """The envelope was encrypted under a key id this keyring does not hold."""

    reason = "unknown_key"


class DecryptionFailed(EnvelopeError):
    """The ciphertext does not decrypt under its key (altered, or the wrong key)."""

    reason = "decryption_failed"


class Replayed(EnvelopeError):
    """A job id that already ran was delivered again: dropped, never run twice."""

    reason = "replayed"


class Retry(VaultqError):
    """Raise it from a task to ask for another attempt.

    ``delay`` (seconds, finite, >= 0) sets the wait before the next attempt exactly, with
    no jitter; None uses the task's backoff. A retry asked this way counts against the
    task's ``retries`` like any other (so ``retries=0``, the default, never retries):
    on the last attempt the job ends ``FAILED`` with ``error_type``
    ``vaultq.errors.Retry``. It is honoured whatever ``retry_on``/``dont_retry_on`` say.
    """

    def __init__(
        self, message: str = "the task asked for a retry", *, delay: float | None = None
    ) -> None:
        if delay is not None and not (isinstance(delay, int | float) and 0 <= delay < 1e9):
            raise ConfigurationError(
                "Retry(delay=...) takes a finite number of seconds >= 0, or None for the "
                "task's backoff"
            )
        super().__init__(message)
        self.delay = None if delay is None else float(delay)


class Fatal(VaultqError):
    """Raise it from a task to fail the job now: never retried, whatever ``retries`` and
    ``retry_on`` say (e.g. ``raise vaultq.Fatal("card declined") from exc``). The job
    ends ``FAILED`` with ``error_type`` ``vaultq.errors.Fatal``."""


class TaskRaised(VaultqError):
    """An attempt failed where the exception itself is not at hand: a process-isolated
    child, an integration's task wrapper (the Django Tasks backend), vaultq's own checks
    of a result. It carries what the worker records: the exception's class path
    (``error_type``), a message that is safe to store (``message``), and the retry
    verdict taken where the class was known (``retry``: None judges it as an unknown
    error, see ``TaskOptions.retries_unknown_errors``; ``delay``: an exact wait)."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retry: bool | None = None,
        delay: float | None = None,
    ) -> None:
        super().__init__(error_type)
        self.error_type = error_type
        self.message = message
        self.retry = retry
        self.delay = delay


class DuplicateJob(VaultqError):
    """``enqueue(job_id=...)`` named an id that is queued, delayed, running or remembered
    as finished: nothing was enqueued. ``job_id`` names it; ``app.job(job_id)`` is the
    handle of the existing job."""

    def __init__(self, message: str, *, job_id: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id


class BrokerError(VaultqError):
    """The broker returned an error; the message says which operation failed."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached; check the URL, the network and credentials."""


class JobError(VaultqError):
    """A job ended without a result. ``job_id`` names it; ``status`` is its final state.

    ``detail`` is the error text the worker stored (the task's exception message, capped):
    kept out of the message because it may quote payload values."""

    status = "failed"

    def __init__(
        self, message: str, *, job_id: str = "", reason: str = "", detail: str = ""
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.reason = reason
        self.detail = detail


class JobFailed(JobError):
    """The task raised on its last attempt. ``error_type`` is the exception's class path."""

    status = "failed"

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        reason: str = "",
        error_type: str = "",
        detail: str = "",
    ) -> None:
        super().__init__(message, job_id=job_id, reason=reason, detail=detail)
        self.error_type = error_type


class JobDenied(JobError):
    """A policy refused the job at run time, before its task was called."""

    status = "denied"


class JobTimedOut(JobError):
    """The last attempt hit its deadline (``timeout``) and was cancelled."""

    status = "timed_out"


class JobRejected(JobError):
    """A delivery under this job id failed to open (REJECTED). The id a rejected delivery
    carried is not authenticated, so this is not proof that the job never ran: don't
    re-enqueue blindly on it (see docs/security.md)."""

    status = "rejected"


class JobExpired(JobError):
    """The job was not started before its ``expires_at``."""

    status = "expired"


class JobCancelled(JobError):
    """The job was cancelled (``handle.cancel()``, ``vaultq cancel``) before it finished."""

    status = "cancelled"


class DependencyFailed(JobCancelled):
    """The job was enqueued with ``depends_on=`` and one of the jobs it waited for did not
    succeed: it never ran (status ``cancelled``; ``detail`` names the dependency)."""


class ResultUnavailable(JobError):
    """The job succeeded but its value was not stored (``store_result=False``).

    Once ``result_ttl`` has passed, a job's outcome is gone from the broker: its status
    reads PENDING again and waiting for it ends in ``TimeoutError``."""

    status = "unknown"
