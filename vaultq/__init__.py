"""vaultq: a small, hardened job queue.

Typed ``msgspec`` payloads, sealed (encrypted and signed) before they leave the
producer, authorized by a policy before they run, bounded by deadlines enforced with
anyio cancel scopes. See README.md and docs/.
"""

from __future__ import annotations

import logging

from vaultq.app import App
from vaultq.errors import (
    AuthorizationDenied,
    BadSignature,
    BrokerError,
    BrokerUnavailable,
    ConfigurationError,
    DecryptionFailed,
    DependencyFailed,
    DuplicateJob,
    EnvelopeError,
    EnvelopeExpired,
    EnvelopeNotYetValid,
    EnvelopeTooLarge,
    Fatal,
    InsecureKeyFile,
    JobCancelled,
    JobDenied,
    JobError,
    JobExpired,
    JobFailed,
    JobRejected,
    JobTimedOut,
    KeyringError,
    MalformedEnvelope,
    PayloadError,
    Replayed,
    ResultUnavailable,
    Retry,
    RevokedKey,
    TaskDefinitionError,
    UnknownKey,
    UnknownTask,
    UnsupportedVersion,
    UntrustedSigner,
    VaultqError,
    WorkflowRefused,
    WrongDestination,
)
from vaultq.jobs import JobContext, JobHandle, JobStatus, current_job
from vaultq.keyring import Keyring
from vaultq.middleware import EnqueueInfo, JobInfo, Middleware, Outcome, WorkerInfo
from vaultq.payload import Secret
from vaultq.policy import (
    Decision,
    Policy,
    PolicyRequest,
    all_of,
    allow_all,
    allow_signers,
    any_of,
    deny_all,
    require_any_permission,
    require_any_role,
    require_authenticated,
    require_permission,
    require_role,
    rule,
)
from vaultq.principal import Principal
from vaultq.priority import Priority
from vaultq.settings import AppSettings, WorkerSettings
from vaultq.tasks import NoArgs, Task, TaskOptions
from vaultq.workflow_groups import (
    Chord,
    Gathered,
    Group,
    GroupHandle,
    MemberFailed,
    MemberOutcomes,
    MemberSucceeded,
    chord,
    group,
)
from vaultq.workflows import Chain, WorkflowFailed, WorkflowHandle

__version__ = "0.1.0"

__all__ = [
    "App",
    "AppSettings",
    "AuthorizationDenied",
    "BadSignature",
    "BrokerError",
    "BrokerUnavailable",
    "Chain",
    "Chord",
    "ConfigurationError",
    "Decision",
    "DecryptionFailed",
    "DependencyFailed",
    "DuplicateJob",
    "EnqueueInfo",
    "EnvelopeError",
    "EnvelopeExpired",
    "EnvelopeNotYetValid",
    "EnvelopeTooLarge",
    "Fatal",
    "Gathered",
    "Group",
    "GroupHandle",
    "InsecureKeyFile",
    "JobCancelled",
    "JobContext",
    "JobDenied",
    "JobError",
    "JobExpired",
    "JobFailed",
    "JobHandle",
    "JobInfo",
    "JobRejected",
    "JobStatus",
    "JobTimedOut",
    "Keyring",
    "KeyringError",
    "MalformedEnvelope",
    "MemberFailed",
    "MemberOutcomes",
    "MemberSucceeded",
    "Middleware",
    "NoArgs",
    "Outcome",
    "PayloadError",
    "Policy",
    "PolicyRequest",
    "Principal",
    "Priority",
    "Replayed",
    "ResultUnavailable",
    "Retry",
    "RevokedKey",
    "Secret",
    "Task",
    "TaskDefinitionError",
    "TaskOptions",
    "UnknownKey",
    "UnknownTask",
    "UnsupportedVersion",
    "UntrustedSigner",
    "VaultqError",
    "WorkerInfo",
    "WorkerSettings",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowRefused",
    "WrongDestination",
    "__version__",
    "all_of",
    "allow_all",
    "allow_signers",
    "any_of",
    "chord",
    "current_job",
    "deny_all",
    "group",
    "require_any_permission",
    "require_any_role",
    "require_authenticated",
    "require_permission",
    "require_role",
    "rule",
]

# A library leaves handlers to the application. Without one, Python's last-resort
# handler would print vaultq's warnings (audit denials) on a producer script's stderr.
logging.getLogger("vaultq").addHandler(logging.NullHandler())
