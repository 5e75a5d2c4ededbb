"""How a settings class declares its options, and what is generated from a declaration.

A field of a settings struct (:mod:`vaultq.settings`) is ``Annotated[type, option(...)]``:
:func:`option` puts its help text, its rule (bounds, choices, name form) and its flag in
one ``msgspec.Meta`` next to the field. From there:

- :func:`check_fields` checks every field against its rule (called from the struct's
  ``__post_init__``, so construction and decoding both check);
- :func:`add_flags` adds one argparse flag per field, whose parser applies the same rule
  and says what is wrong in the words of the command line;
- :func:`options_of` lists the declarations (for the docs check and the tests).
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from vaultq.errors import ConfigurationError

__all__ = [
    "OptionInfo",
    "add_flags",
    "check_fields",
    "option",
    "options_of",
    "values_from_flags",
]


def option(
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: tuple[Any, ...] | None = None,
    seconds: bool = False,
    name_like: bool = False,
    positional: bool = False,
    secret_value: bool = False,
) -> msgspec.Meta:
    """The one declaration of an option: its help, its rule, its flag."""
    extra: dict[str, Any] = {"seconds": seconds}
    for key, value in (
        ("flag", flag),
        ("metavar", metavar),
        ("at_least", at_least),
        ("above", above),
        ("at_most", at_most),
        ("choices", choices),
    ):
        if value is not None:
            extra[key] = value
    extra["name_like"] = name_like
    extra["positional"] = positional
    extra["secret_value"] = secret_value
    return msgspec.Meta(description=help, extra=extra)


@dataclass(frozen=True)
class OptionInfo:
    """One field of a settings class, as the generators see it."""

    name: str
    help: str
    default: Any
    kind: type
    """``int``, ``float``, ``bool``, ``str`` or ``tuple`` (of str)."""
    optional: bool
    """``None`` is allowed (it means "take the default from elsewhere")."""
    flag: str | None
    metavar: str | None
    at_least: float | None
    above: float | None
    at_most: float | None
    choices: tuple[Any, ...] | None
    seconds: bool
    name_like: bool
    positional: bool
    secret_value: bool

    def problem(self, value: Any) -> str | None:
        """Why ``value`` breaks this option's rule (a phrase after "it"), or None."""
        if value is None:
            return None if self.optional else "must be given"
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be True or False"
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be a whole number"
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return "must be a number" + (" of seconds" if self.seconds else "")
            if not math.isfinite(value):
                what = "must be a finite number" + (" of seconds" if self.seconds else "")
                if self.at_least is not None and self.at_most is None:
                    return f"{what} >= {self.at_least:g}"
                if self.above is not None:
                    return f"{what} > {self.above:g}"
                return self._range_problem(value) or what
        elif self.kind is str:
            if not isinstance(value, str):
                return "must be a string"
            if self.name_like and not _is_name(value):
                return "must be a non-empty name of letters, digits, '-' and '_'"
        elif self.kind is tuple:
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                return "must be a tuple of names"
            if self.name_like and not all(_is_name(v) for v in value):
                return "must hold names of letters, digits, '-' and '_'"
        if self.choices is not None and value not in self.choices:
            return "must be one of " + ", ".join(str(c) for c in self.choices)
        return self._range_problem(value)

    def _range_problem(self, value: Any) -> str | None:
        unit = " seconds" if self.seconds else ""
        lo, hi = self.at_least, self.at_most
        if lo is not None and hi is not None and not lo <= value <= hi:
            return f"must be between {lo:g} and {hi:g}{unit}"
        if lo is not None and not value >= lo:
            if self.seconds:
                return f"must be a finite number of seconds >= {lo:g}"
            return f"must be at least {lo:g}"
        if self.above is not None and not value > self.above:
            return f"must be more than {self.above:g}{unit}"
        return None

    def parse(self, text: str) -> Any:
        """A command-line value: parsed, then checked by the same rule as the field.
        Raises ``argparse.ArgumentTypeError`` (argparse prints it and exits 2)."""
        value: Any
        if self.kind is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        elif self.kind is float:
            try:
                value = float(text)
            except ValueError:
                what = "a number of seconds" if self.seconds else "a number"
                raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        elif self.kind is tuple:
            value = tuple(q for q in text.split(",") if q)
        elif self.choices is not None:
            # Case-insensitive where the choices are upper-case words (log levels).
            value = text.upper() if text.upper() in self.choices else text
            if value not in self.choices:
                shown = ", ".join(str(c) for c in self.choices)
                raise argparse.ArgumentTypeError(f"{text!r} is not one of {shown}")
        else:
            value = text
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value


def _is_name(text: str) -> bool:
    return bool(text) and text.replace("-", "").replace("_", "").isalnum() and text.isascii()


def options_of(cls: type[msgspec.Struct]) -> list[OptionInfo]:
    """The fields of a settings class with their declared help and rules, in order."""
    found = _OPTIONS.get(cls)
    if found is None:
        found = _OPTIONS[cls] = list(_read_options(cls))
    return found


_OPTIONS: dict[type, list[OptionInfo]] = {}


def _read_options(cls: type[msgspec.Struct]) -> Iterator[OptionInfo]:
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = dict(
        zip(
            cls.__struct_fields__[len(cls.__struct_fields__) - len(cls.__struct_defaults__) :],
            cls.__struct_defaults__,
            strict=True,
        )
    )
    for name in cls.__struct_fields__:
        hint = hints[name]
        if typing.get_origin(hint) is not Annotated:
            raise TypeError(f"{cls.__name__}.{name} has no help text")  # a bug here, not user input
        inner, meta = typing.get_args(hint)[0], typing.get_args(hint)[1]
        base, optional = inner, False
        if isinstance(inner, types.UnionType) or typing.get_origin(inner) is typing.Union:
            members = typing.get_args(inner)
            optional = type(None) in members
            base = next(a for a in members if a is not type(None))
        if typing.get_origin(base) is Literal:
            kind: type = type(typing.get_args(base)[0])
        elif typing.get_origin(base) is tuple:
            kind = tuple
        else:
            kind = base
        extra = meta.extra or {}
        yield OptionInfo(
            name=name,
            help=meta.description or "",
            default=defaults[name],
            kind=kind,
            optional=optional,
            flag=extra.get("flag"),
            metavar=extra.get("metavar"),
            at_least=extra.get("at_least"),
            above=extra.get("above"),
            at_most=extra.get("at_most"),
            choices=extra.get("choices"),
            seconds=bool(extra.get("seconds")),
            name_like=bool(extra.get("name_like")),
            positional=bool(extra.get("positional")),
            secret_value=bool(extra.get("secret_value")),
        )


def check_fields(settings: msgspec.Struct) -> None:
    """Check every field of ``settings`` against its declared rule."""
    cls = type(settings)
    for option in options_of(cls):
        value = getattr(settings, option.name)
        problem = option.problem(value)
        if problem is not None:
            shown = "" if option.secret_value or isinstance(value, str) else f" (got {value!r})"
            where = f" ({option.flag})" if option.flag else ""
            raise ConfigurationError(
                f"{cls.__name__}.{option.name}{where} {problem}{shown}: fix the value where "
                "it is set (docs/configuration.md lists every option)"
            )


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type[msgspec.Struct],
    *,
    skip: tuple[str, ...] = (),
    defaults_from_settings: bool = True,
) -> None:
    """Add one flag per field of the settings class ``cls`` (but ``skip``) to ``parser``.

    The destination of each flag is the field's name; with ``defaults_from_settings``
    the parser's defaults are the fields' defaults, otherwise None (a command that merges
    other sources, such as ``settings.VAULTQ``, tells "not given" from a value)."""
    for option in options_of(cls):
        if option.name in skip:
            continue
        default = option.default if defaults_from_settings else None
        if option.positional:
            parser.add_argument(
                option.name, metavar=option.metavar, nargs="?", default=default, help=option.help
            )
            continue
        if option.flag is None:
            raise TypeError(f"{cls.__name__}.{option.name} has no flag")  # a bug, not input
        if option.kind is tuple and default == ():
            default = None if not defaults_from_settings else ()
        if option.kind is bool:
            # A switch: given means True; not given keeps the default (None: "not given").
            parser.add_argument(
                option.flag,
                dest=option.name,
                action="store_true",
                default=default,
                help=option.help,
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=_parser_of(option),
            default=default,
            metavar=option.metavar,
            help=option.help,
        )


def _parser_of(option: OptionInfo) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return option.parse(text)

    # argparse names the type in "invalid <name> value" messages; ours say more.
    parse.__name__ = option.name
    return parse


def values_from_flags(args: argparse.Namespace, cls: type[msgspec.Struct]) -> dict[str, Any]:
    """The fields of ``cls`` that parsed flags gave (not None), by name."""
    values: dict[str, Any] = {}
    for option in options_of(cls):
        value = getattr(args, option.name, None)
        if value is not None:
            values[option.name] = value
    return values
