"""The Redis broker's data layout: every key name of a queue (:class:`QueueKeys`), the
Lua scripts with the header naming the same keys, and the decoding of what is read
back (stored fields are unauthenticated: whoever can write to Redis wrote them, so
decoding never crashes on a crafted value).

Internal to :mod:`vaultq.brokers.redis` (which re-exports ``GROUP`` and ``QueueKeys``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any, Final

from redis.crc import key_slot

from vaultq.brokers.base import DeadLetter, Delivery
from vaultq.errors import ConfigurationError
from vaultq.priority import LEVELS, level_of

__all__ = [
    "GROUP",
    "LEVEL_SUFFIX",
    "SCAN_PAGE",
    "SUFFIX_LEVEL",
    "QueueKeys",
    "as_bytes",
    "attempt_of",
    "check_name",
    "dead_letter",
    "fields",
    "glob_escape",
    "info_tag",
    "lease_args",
    "load_script",
    "ms",
    "number",
    "seconds_of",
    "slot_groups",
    "split_info_tag",
    "tag_entry",
    "tag_level",
    "text",
    "tick_arg",
]

GROUP: Final = "vaultq"
"""Name of the consumer group every queue stream is read through."""

LEVEL_SUFFIX: Final[dict[int, str]] = {1: ":high", 0: "", -1: ":low"}
"""Priority level -> suffix of its stream, delayed set and reclaim cursor."""
SUFFIX_LEVEL: Final[dict[str, int]] = {v: k for k, v in LEVEL_SUFFIX.items()}


class QueueKeys:
    """Every Redis key name of one queue, in one place.

    All names start with ``vaultq:{<namespace>:<queue>}:`` so they share a hash tag.
    """

    STREAM: Final = "stream"
    DELAYED: Final = "delayed"
    DELAYED_DATA: Final = "delayed:data"
    DEAD: Final = "dead"
    DONE: Final = "done"
    RECLAIM: Final = "reclaim"
    RESULT: Final = "result:"
    CLAIM: Final = "claim:"
    CANCEL: Final = "cancel:"
    ENQUEUED: Final = "enq:"
    JOB: Final = "job:"
    COUNTERS: Final = "counters"
    SCHEDULES: Final = "schedules"
    UNIQUE: Final = "unique:"
    LIMIT: Final = "limit:"

    __slots__ = ("_levels", "level", "prefix", "queue", "suffix")

    def __init__(self, namespace: str, queue: str, level: int = 0) -> None:
        check_name("queue", queue)
        self.queue = queue
        self.prefix = f"vaultq:{{{namespace}:{queue}}}:"
        self.level = int(level_of(level))
        self.suffix = LEVEL_SUFFIX[self.level]
        self._levels: dict[int, QueueKeys] = {self.level: self}

    def at(self, level: int) -> QueueKeys:
        """The keys of this queue at priority ``level`` (-1, 0, 1): its own stream,
        delayed set and reclaim cursor (``stream:high`` ...); every other key (claims,
        results, dead letters) is the queue's. Level 0 keeps the names of a queue
        without priorities."""
        found = self._levels.get(level)
        if found is None:
            level = int(level_of(level))  # an out-of-range number: the nearest level
            namespace = self.prefix[len("vaultq:{") : -len(f":{self.queue}}}:")]
            found = self._levels[level] = QueueKeys(namespace, self.queue, level)
            found._levels = self._levels
        return found

    def levels(self) -> list[QueueKeys]:
        """The keys of every level, highest first."""
        return [self.at(level) for level in LEVELS]

    @property
    def stream(self) -> str:
        return self.prefix + self.STREAM + self.suffix

    @property
    def delayed(self) -> str:
        """Sorted set: member ``<job id>|<attempt>|<enqueued at>|<unique>``, score not-before."""
        return self.prefix + self.DELAYED + self.suffix

    @property
    def delayed_data(self) -> str:
        """Hash: delayed member -> sealed envelope."""
        return self.prefix + self.DELAYED_DATA + self.suffix

    @property
    def dead(self) -> str:
        return self.prefix + self.DEAD

    @property
    def done_index(self) -> str:
        """Sorted set of the hours that have a finished-id set."""
        return self.prefix + self.DONE

    def done(self, hour: int) -> str:
        """Set of ids finished with a remember-until time in ``hour`` (Unix hours)."""
        return f"{self.prefix}{self.DONE}:{hour}"

    @property
    def reclaim_cursor(self) -> str:
        return self.prefix + self.RECLAIM + self.suffix

    def result(self, job_id: str) -> str:
        return self.prefix + self.RESULT + job_id

    def claim(self, job_id: str) -> str:
        return self.prefix + self.CLAIM + job_id

    def cancel(self, job_id: str) -> str:
        return self.prefix + self.CANCEL + job_id

    def enqueued(self, job_id: str) -> str:
        """Marker of a job id written in the last :data:`ENQUEUE_DEDUP_WINDOW` seconds."""
        return self.prefix + self.ENQUEUED + job_id

    def job(self, job_id: str) -> str:
        """Reservation of an id written by ``enqueue_unique`` (until settled or expired)."""
        return self.prefix + self.JOB + job_id

    @property
    def counters(self) -> str:
        """Hash: reason -> entries removed without a dead letter (duplicates, replays)."""
        return self.prefix + self.COUNTERS

    @property
    def schedules(self) -> str:
        """Hash: ``m:<schedule>`` -> mark (newest tick claimed or passed over),
        ``f:<schedule>`` -> newest tick that enqueued a job."""
        return self.prefix + self.SCHEDULES

    def unique(self, key: str) -> str:
        """Lock of a unique key (a digest): the job id holding it (``enqueue_keyed``)."""
        return self.prefix + self.UNIQUE + key

    @classmethod
    def lua_header(cls) -> str:
        """Lua locals naming the same keys, prepended to every script (ARGV[1] = prefix)."""
        # KEYS[1] is the stream of one priority level; LVL is its suffix ('' for level 0,
        # ':high', ':low'), and the level's delayed set and cursor carry the same one.
        names = {
            "STREAM": "KEYS[1]",
            "LVL": f"string.sub(KEYS[1], #P + {len(cls.STREAM) + 1})",
            "DELAYED": f"P .. '{cls.DELAYED}' .. LVL",
            "DELAYED_DATA": f"P .. '{cls.DELAYED_DATA}' .. LVL",
            "DEAD": f"P .. '{cls.DEAD}'",
            "DONE": f"P .. '{cls.DONE}'",
            "RECLAIM": f"P .. '{cls.RECLAIM}' .. LVL",
            "RESULT": f"P .. '{cls.RESULT}'",
            "CLAIM": f"P .. '{cls.CLAIM}'",
            "CANCEL": f"P .. '{cls.CANCEL}'",
            "ENQUEUED": f"P .. '{cls.ENQUEUED}'",
            "JOB": f"P .. '{cls.JOB}'",
            "COUNTERS": f"P .. '{cls.COUNTERS}'",
            "SCHEDULES": f"P .. '{cls.SCHEDULES}'",
            "UNIQUE": f"P .. '{cls.UNIQUE}'",
            "LIMIT": f"P .. '{cls.LIMIT}'",
        }
        lines = ["local P = ARGV[1]", f"local GROUP = '{GROUP}'"]
        lines += [f"local {name} = {value}" for name, value in names.items()]
        return "\n".join(lines) + "\n"


def check_name(what: str, name: str) -> None:
    # Braces would move the hash tag; ':' in a namespace would let "a"+"b:c" and
    # "a:b"+"c" share keys; whitespace and control characters make redis-cli painful.
    bad = set("{}") | ({":"} if what == "namespace" else set())
    if not name or any(c in bad or c.isspace() or not c.isprintable() for c in name):
        raise ConfigurationError(
            f"invalid {what} name {name!r}: use a non-empty name without braces, "
            f"whitespace{' or colons' if what == 'namespace' else ''}"
        )


_LUA_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LUA_DEFINES: Final = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*)", re.M)


def load_script(name: str) -> str:
    """The script ``name`` as sent to Redis: the key header and the helpers of
    ``common.lua`` it uses, then its body.

    Only what the body refers to (directly or through another helper) is included:
    Redis runs the whole text on every call, and the full header and helper set (a
    dozen string concatenations, sixteen closures) cost ~1 µs of server CPU per call,
    a third of an empty script's cost. Names are matched as words, comments included,
    so a helper is never left out by mistake (a missing one fails at once: Redis
    scripts cannot read undefined globals)."""
    lua = resources.files("vaultq.brokers").joinpath("lua")
    common = lua.joinpath("common.lua").read_text(encoding="utf-8")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    # One definition per line of the header, one per blank-line-separated block of
    # common.lua (a block without a definition is a comment: left out).
    parts: list[tuple[str, str]] = []
    for line in QueueKeys.lua_header().splitlines(keepends=True):
        found = _LUA_DEFINES.match(line)
        if found:
            parts.append((found.group(1), line))
    for block in common.split("\n\n"):
        found = _LUA_DEFINES.search(block)
        if found:
            parts.append((found.group(1), block.strip("\n") + "\n"))
    used = set(_LUA_NAME.findall(body))
    kept: set[str] = set()
    grew = True
    while grew:
        grew = False
        for defined, text_ in parts:
            if defined in used and defined not in kept:
                kept.add(defined)
                used.update(_LUA_NAME.findall(text_))
                grew = True
    return "".join(text_ for defined, text_ in parts if defined in kept) + body


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def fields(raw: Any) -> dict[str, bytes]:
    """A stream entry's fields (dict or flat list, depending on the reply parser)."""
    if isinstance(raw, dict):
        return {text(k): v for k, v in raw.items()}
    items = list(raw)
    return {text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def as_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


_ATTEMPT: Final = re.compile(rb"[1-9][0-9]{0,8}")
_SECONDS: Final = re.compile(rb"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def _ascii(value: Any) -> bytes:
    return value.encode("utf-8", "replace") if isinstance(value, str) else bytes(value)


def attempt_of(value: Any, *, least: int = 1) -> int:
    """An entry's attempt count, in the form docs/redis.md states (1-999999999, decimal
    ASCII). The fetch script dead-letters a stream entry with any other ``att``; this
    reads dead letters and listings, which anyone who can write to Redis may have
    written too: another value is ``least``, never a crash (``int`` would also take
    ``" 7"``, ``"+7"``, non-ASCII digits and unbounded digit strings)."""
    try:
        raw = _ascii(value)
    except (TypeError, ValueError):
        return least
    return max(least, int(raw)) if _ATTEMPT.fullmatch(raw) else least


def seconds_of(value: Any) -> float:
    """Unix seconds in the form docs/redis.md states (decimal ASCII, no sign, no
    exponent); anything else (``float`` would take ``"nan"``, ``"inf"``, ``"-5"``,
    ``"1e300"``) is 0.0."""
    try:
        raw = _ascii(value)
    except (TypeError, ValueError):
        return 0.0
    return float(raw) if _SECONDS.fullmatch(raw) else 0.0


def number(value: Any) -> float:
    """A number vaultq wrote itself (counters, sizes, marks): 0.0 when it is not one."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return 0.0
    return result if math.isfinite(result) else 0.0


def tag_entry(tag: str) -> str:
    """The stream entry id inside a delivery tag ``<entry id>[<level suffix>]/<nonce>``."""
    return tag.partition("/")[0].partition(":")[0]


def tag_level(tag: str) -> int:
    """The priority level of the stream a delivery tag names (0 without a suffix)."""
    _, colon, name = tag.partition("/")[0].partition(":")
    return SUFFIX_LEVEL.get(colon + name, 0)


def info_tag(level: int, tag: str) -> str:
    """``JobInfo.tag`` of a waiting entry at ``level``: the entry id or delayed member,
    prefixed ``high/`` or ``low/`` off level 0 (a valid job id never holds ``/``)."""
    suffix = LEVEL_SUFFIX[level]
    return f"{suffix[1:]}/{tag}" if suffix else tag


def split_info_tag(tag: str) -> tuple[int, str]:
    """(level, entry id or delayed member) of a ``JobInfo.tag`` made by :func:`info_tag`."""
    head, slash, rest = tag.partition("/")
    level = SUFFIX_LEVEL.get(":" + head) if slash else None
    return (level, rest) if level else (0, tag)


def lease_args(deliveries: Sequence[Delivery]) -> list[str]:
    """(entry id, tag, job id) of each delivery, flat: the extend script's arguments."""
    return [a for d in deliveries for a in (tag_entry(d.tag), d.tag, d.job_id)]


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def slot_groups(keys: Sequence[str]) -> list[list[str]]:
    """``keys`` grouped by Redis Cluster hash slot (first-seen order)."""
    groups: dict[int, list[str]] = {}
    for key in keys:
        groups.setdefault(key_slot(key.encode()), []).append(key)
    return list(groups.values())


SCAN_PAGE: Final = 500
"""Entries read per round trip by the operator tools' scans."""


def glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\^" else c for c in text)


def dead_letter(queue: str, entry_id: Any, f: dict[str, bytes]) -> DeadLetter:
    return DeadLetter(
        queue=queue,
        job_id=text(f.get("id", b"")),
        reason=text(f.get("reason", b"")),
        detail=text(f.get("detail", b"")),
        attempt=attempt_of(f.get("att", b"0"), least=0),
        at=seconds_of(f.get("at", b"0")),
        tag=text(entry_id),
    )


def tick_arg(tick: float) -> str:
    # Ticks are whole seconds; one spelling so Lua compares the numbers it stored.
    return str(int(tick))
