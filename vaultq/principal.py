"""Who asked for a job. Travels inside the sealed body, so only a trusted signer can assert it."""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from typing import Final

import msgspec

__all__ = ["ANONYMOUS_ID", "ATTR_INT_MAX", "PRINCIPAL_ID_MAX", "Principal", "wire_problem"]

ANONYMOUS_ID = "anonymous"
PRINCIPAL_ID_MAX: Final = 256
"""Longest ``principal.id`` a sealed job may carry, in characters (code points)."""
ATTR_INT_MAX: Final = 2**53 - 1
"""Integer ``attrs`` values are within +-(2^53 - 1): every JSON reader (JavaScript's
doubles included) reads them exactly, so a policy elsewhere compares the same number."""
# C0 controls, DEL and C1 controls: an id is written into audit lines and result bodies.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")


class Principal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The identity a job runs for: ``Principal("user:42", permissions={"orders.refund"})``.

    ``roles`` and ``permissions`` accept any iterable of strings and are stored as
    frozensets. ``attrs`` are free-form facts for payload-aware policies (tenant,
    plan...); they are never logged: audit lines carry only ``id``.
    """

    id: str
    # Typed as abstract sets so callers may pass {"a", "b"}; stored as frozensets.
    roles: AbstractSet[str] = frozenset()
    permissions: AbstractSet[str] = frozenset()
    attrs: dict[str, str | int | bool] = {}

    def __post_init__(self) -> None:
        # Accept sets, lists and tuples from callers; keep the struct hashable and immutable.
        if not isinstance(self.roles, frozenset):
            msgspec.structs.force_setattr(self, "roles", frozenset(self.roles))
        if not isinstance(self.permissions, frozenset):
            msgspec.structs.force_setattr(self, "permissions", frozenset(self.permissions))

    @classmethod
    def anonymous(cls) -> Principal:
        return cls(ANONYMOUS_ID)

    @property
    def is_anonymous(self) -> bool:
        return self.id == ANONYMOUS_ID

    def __repr__(self) -> str:
        # attrs may hold personal data: keep them out of reprs and logs.
        return (
            f"Principal({self.id!r}, roles={sorted(self.roles)!r}, "
            f"permissions={sorted(self.permissions)!r})"
        )

    __str__ = __repr__


def wire_problem(principal: Principal) -> str | None:
    """Why ``principal`` may not travel in a sealed job (docs/envelope.md, *Body JSON*),
    or None. ``seal_job`` refuses to seal it and ``open_job`` refuses it as malformed, so
    a second implementation and vaultq accept the same principals."""
    if not 1 <= len(principal.id) <= PRINCIPAL_ID_MAX:
        return f"principal.id must be 1 to {PRINCIPAL_ID_MAX} characters"
    if _CONTROL.search(principal.id):
        return "principal.id must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
    for value in principal.attrs.values():
        if type(value) is int and not -ATTR_INT_MAX <= value <= ATTR_INT_MAX:
            return "principal.attrs integers must be within +-(2^53 - 1)"
    return None
