"""The priority rule itself (``vaultq/priority.py``): levels, the anti-starvation plan
every broker fetches by, and the producer-side checks."""

from __future__ import annotations

import pytest

from vaultq import Priority
from vaultq.errors import ConfigurationError, InvalidArgument
from vaultq.priority import (
    BOOST_EVERY,
    LEVELS,
    FetchRotation,
    choose_priority,
    django_priority,
    fetch_plan,
    parse_priority,
)

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


def test_levels_are_three_highest_first() -> None:
    assert LEVELS == (HIGH, NORMAL, LOW)
    assert [int(p) for p in LEVELS] == [1, 0, -1]


@pytest.mark.parametrize(
    ("value", "level"),
    [("high", HIGH), ("Normal", NORMAL), (" low ", LOW), (1, HIGH), (0, NORMAL), (-1, LOW)]
    + [(p, p) for p in Priority],
)
def test_parse_priority_accepts_names_values_and_members(value: object, level: Priority) -> None:
    assert parse_priority(value) is level


@pytest.mark.parametrize("value", [True, 2, -2, 9, "urgent", "", None, 1.0, b"high"])
def test_parse_priority_refuses_anything_else_saying_what_to_write(value: object) -> None:
    with pytest.raises(InvalidArgument, match="'low', 'normal' or 'high'"):
        parse_priority(value)


def test_plan_is_highest_first_except_every_tenth_fetch() -> None:
    count = 5
    usual = ((HIGH, count), (NORMAL, count), (LOW, count))
    for n in range(1, 10 * BOOST_EVERY):
        plan = fetch_plan(n, count)
        if n % BOOST_EVERY:
            assert plan == usual, n
        else:
            # One job of a lower level first, alternating normal and low; then as usual.
            boosted = NORMAL if (n // BOOST_EVERY) % 2 else LOW
            assert plan == ((boosted, 1), *usual), n
    assert fetch_plan(1, 0) == ()


def test_every_lower_level_is_served_within_two_boost_periods() -> None:
    # Under a steady high load (the high level never empty), simulate which level each
    # one-job fetch serves: normal and low each get one within 2 * BOOST_EVERY fetches.
    rotation = FetchRotation()
    served: list[Priority] = []
    for _ in range(4 * BOOST_EVERY):
        level = rotation.plan(1)[0][0]
        served.append(level)
        rotation.delivered(1)
    assert served[BOOST_EVERY - 1] is NORMAL
    assert served[2 * BOOST_EVERY - 1] is LOW
    assert served.count(HIGH) == 4 * BOOST_EVERY - 4
    for start in range(len(served) - 2 * BOOST_EVERY + 1):
        window = served[start : start + 2 * BOOST_EVERY]
        assert NORMAL in window and LOW in window


def test_rotation_counts_only_fetches_that_delivered() -> None:
    rotation = FetchRotation()
    for _ in range(BOOST_EVERY - 1):
        rotation.delivered(3)
    for _ in range(5):
        rotation.delivered(0)  # idle polls do not move the counter
    assert rotation.plan(2)[0] == (NORMAL, 1)


@pytest.mark.parametrize(
    ("django", "level"), [(-100, LOW), (-1, LOW), (0, NORMAL), (1, HIGH), (100, HIGH)]
)
def test_django_priorities_map_by_sign(django: int, level: Priority) -> None:
    assert django_priority(django) is level


def test_choose_priority_refuses_a_level_the_broker_would_ignore() -> None:
    asked: list[bool] = []

    def unsupported() -> bool:
        asked.append(True)
        return False

    kw = {"task": "t", "supported": unsupported, "broker": "x://"}
    assert choose_priority(None, NORMAL, **kw) is NORMAL  # type: ignore[arg-type]
    assert choose_priority("normal", HIGH, **kw) is NORMAL  # type: ignore[arg-type]
    assert not asked  # a normal job never asks the broker
    with pytest.raises(ConfigurationError, match="does not declare them"):
        choose_priority("high", NORMAL, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="priority 'low'"):
        choose_priority(None, LOW, **kw)  # type: ignore[arg-type]
