"""Cost per job of the typed check every enqueue runs (``Task.check_payload``).

Compares, per payload shape, in µs per job:

- ``encode``: what enqueue did before the check (msgspec JSON encode, no type check);
- ``checked``: what enqueue does now: encode, then strictly decode those same bytes
  (plus the non-finite float walk when the output has a ``null`` and the type a float);
- ``convert``: the alternative measured and not taken: ``msgspec.to_builtins`` then a
  strict ``msgspec.convert`` (it lets NaN through, and still needs the encode after);
- ``seal``: ``seal_job`` of the encoded payload with an HMAC keyring, for scale: the
  rest of an enqueue's CPU work before the broker call.

Run: ``.venv/bin/python benchmarks/enqueue_validate.py`` (a few seconds). Prints figures
only; nothing checks a timing.
"""

from __future__ import annotations

import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vaultq.envelope import JobMeta, new_job_id, seal_job
from vaultq.keyring import Keyring
from vaultq.payload import Codec, Secret
from vaultq.principal import Principal


class Line(msgspec.Struct, frozen=True):
    sku: str
    qty: int
    price: float


class Refund(msgspec.Struct, frozen=True):
    order_id: int
    card_token: Secret[str]
    reason: str
    amount: float | None = None


class Order(msgspec.Struct, frozen=True):
    order_id: int
    customer: str
    lines: list[Line]
    tags: dict[str, str]
    note: str | None = None


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.reveal()
    raise TypeError(type(obj).__name__)


def _cases() -> list[tuple[str, type[Any], Any]]:
    lines = [Line(sku=f"sku-{i}", qty=i, price=9.99) for i in range(20)]
    return [
        ("Refund, 4 fields", Refund, Refund(7, Secret("tok_123"), "damaged", 12.5)),
        ("Refund, amount=None", Refund, Refund(7, Secret("tok_123"), "damaged")),
        (
            "Order, 20 lines",
            Order,
            Order(7, "c-42", lines, {"channel": "web", "promo": "x"}),
        ),
    ]


def _best_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    keyring = Keyring.generate()
    principal = Principal("user:42", permissions=frozenset({"orders.refund"}))
    meta = JobMeta()
    print(
        f"{'payload':<22} {'bytes':>6} {'encode':>8} {'checked':>8} {'convert':>8} "
        f"{'seal':>7} {'check adds':>10}"
    )
    for label, tp, value in _cases():
        codec: Codec[Any] = Codec(tp)
        data = codec.encode(value)

        def encode(codec: Codec[Any] = codec, value: Any = value) -> object:
            return codec.encode(value)

        def checked(codec: Codec[Any] = codec, value: Any = value) -> object:
            return codec.encode_checked(value)

        def via_convert(codec: Codec[Any] = codec, value: Any = value, tp: Any = tp) -> object:
            plain = msgspec.to_builtins(value, enc_hook=_enc_hook)
            msgspec.convert(plain, tp, strict=True, dec_hook=_dec)
            return codec.encode(value)

        def seal(data: bytes = data) -> object:
            now = time.time()
            return seal_job(
                keyring,
                job_id=new_job_id(now),
                app="shop",
                task="refund",
                queue="default",
                payload=data,
                principal=principal,
                meta=meta,
                issued_at=now,
                not_before=now,
                expires_at=now + 3600,
            )

        number = 5000
        e = _best_us(encode, number)
        c = _best_us(checked, number)
        v = _best_us(via_convert, number)
        s = _best_us(seal, number // 5)
        print(f"{label:<22} {len(data):>6} {e:>8.2f} {c:>8.2f} {v:>8.2f} {s:>7.2f} {c - e:>8.2f}us")
    print("µs per job, best of 7; 'check adds' = checked - encode")


def _dec(tp: Any, obj: Any) -> Any:
    if tp is Secret or getattr(tp, "__origin__", None) is Secret:
        return Secret(obj)
    raise NotImplementedError


if __name__ == "__main__":
    main()
