"""Who asked for a job. Travels inside the sealed body, so only a trusted signer can assert it."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

import msgspec

__all__ = ["ANONYMOUS_ID", "Principal"]

ANONYMOUS_ID = "anonymous"


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
