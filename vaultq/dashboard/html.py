"""HTML built so that nothing read from the broker can become markup.

Every page of the dashboard is made of :func:`el` calls: a child that is a plain ``str``
is always escaped (``&``, ``<``, ``>``, both quotes), attribute values too, and control
characters are shown as ``\\x1b``-style escapes first (``safe_text``), so a task name,
reason, job id or principal id written into the broker by an attacker renders as inert
text. Only :class:`Markup` -- produced by :func:`el` itself -- passes unescaped. There is
no template language and no ``|safe``: there is no way to ask for raw broker data.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

__all__ = ["Markup", "el", "join", "safe_text"]

_MAX_TEXT = 2000
"""Longest text shown from one field (a megabyte-long "reason" stays a line)."""

# Void elements: written without a closing tag.
_VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})


class Markup(str):
    """Already escaped HTML (only :func:`el` and :func:`join` make it)."""

    __slots__ = ()


def safe_text(value: object) -> str:
    """``value`` as text fit for a page: unprintable characters as ``\\uXXXX`` escapes,
    length bounded. Not yet HTML-escaped (:func:`el` does that)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT] + "..."
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")


def _escape(value: object) -> str:
    return html.escape(safe_text(value), quote=True)


def _render(child: object, out: list[str]) -> None:
    if child is None or child is False:
        return
    if isinstance(child, Markup):
        out.append(child)
    elif isinstance(child, str | int | float):
        out.append(_escape(child))
    elif isinstance(child, Iterable):
        for item in child:
            _render(item, out)
    else:
        out.append(_escape(child))


def el(tag: str, *children: object, **attrs: object) -> Markup:
    """``<tag attrs>children</tag>``. Attribute names: ``class_`` -> ``class``,
    ``data_x`` -> ``data-x``; ``True`` -> a bare attribute, ``None``/``False`` -> left out."""
    parts = [f"<{tag}"]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        key = name.rstrip("_").replace("_", "-")
        if value is True:
            parts.append(f" {key}")
        else:
            parts.append(f' {key}="{_escape(value)}"')
    parts.append(">")
    if tag in _VOID:
        return Markup("".join(parts))
    out: list[str] = []
    for child in children:
        _render(child, out)
    return Markup("".join(parts) + "".join(out) + f"</{tag}>")


def join(*children: object) -> Markup:
    """Several nodes as one (escaped like :func:`el` children)."""
    out: list[str] = []
    for child in children:
        _render(child, out)
    return Markup("".join(out))
