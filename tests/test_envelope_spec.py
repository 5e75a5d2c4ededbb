"""docs/envelope.md cannot drift from the code: its header, job body and result body
tables name exactly the fields of the msgspec structs that decode them, in the header's
order, with the same optionality, a type column that covers the decoded types, and the
numeric bounds the structs enforce."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec.inspect as mi
import pytest

from vaultq.envelope import Header, JobBody, ResultBody
from vaultq.envelope_types import ResultWire

DOC = (Path(__file__).resolve().parents[1] / "docs" / "envelope.md").read_text(encoding="utf-8")


def table_after(marker: str) -> list[dict[str, str]]:
    """The first markdown table after the line starting with ``marker``, as dicts."""
    lines = DOC[DOC.index("\n" + marker) + 1 :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    head, rows = rows[0], rows[2:]
    assert all(len(row) == len(head) for row in rows), marker
    return [dict(zip(head, row, strict=True)) for row in rows]


def names(cell: str) -> list[str]:
    """Field names in a cell: "`error_type`, `error`" -> both."""
    return re.findall(r"`([a-z_.]+)`", cell)


WORDS: dict[type[mi.Type], str] = {
    mi.StrType: "string",
    mi.IntType: "integer",
    mi.FloatType: "number",
    mi.BoolType: "boolean",
    mi.NoneType: "null",
    mi.DictType: "object",
    mi.StructType: "object",
    mi.SetType: "array",
    mi.FrozenSetType: "array",
    mi.ListType: "array",
}


def words(t: mi.Type) -> set[str]:
    if isinstance(t, mi.UnionType):
        return set().union(*(words(member) for member in t.types))
    word = WORDS.get(type(t))
    return {word} if word else set()  # Raw / Any: any JSON


def _spell(n: int) -> str:
    return "2^31−1" if n == 2**31 - 1 else str(n)


def bounds(t: mi.Type) -> list[tuple[str, ...]]:
    """For each numeric bound the struct enforces, the spellings (one of which a row
    must contain): ``≥ 0`` / ``0 ≤`` / ``0..``, ``≤ N`` / ``..N``, ``> 0``."""
    if isinstance(t, mi.UnionType):
        return [b for member in t.types for b in bounds(member)]
    out: list[tuple[str, ...]] = []
    if isinstance(t, mi.IntType | mi.FloatType):
        if t.ge is not None:
            n = _spell(int(t.ge))
            out.append((f"≥ {n}", f"{n} ≤", f"{n}.."))
        if t.gt is not None:
            out.append((f"> {_spell(int(t.gt))}",))
        if t.le is not None:
            n = _spell(int(t.le))
            out.append((f"≤ {n}", f"..{n}"))
    return out


def struct_fields(cls: type, prefix: str = "") -> dict[str, mi.Field]:
    """Every field, with the nested structs' fields under ``<field>.``."""
    out: dict[str, mi.Field] = {}
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        out[prefix + field.encode_name] = field
        members = field.type.types if isinstance(field.type, mi.UnionType) else (field.type,)
        for member in members:
            if isinstance(member, mi.StructType):
                out.update(struct_fields(member.cls, prefix + field.encode_name + "."))
    return out


def check_body_table(marker: str, cls: type) -> None:
    fields = struct_fields(cls)
    rows = {name: row for row in table_after(marker) for name in names(row["field"])}
    assert set(rows) == set(fields), f"{marker} table and {cls.__name__} differ"
    for name, field in fields.items():
        row = rows[name]
        assert row["required"].startswith("**yes**") == field.required, name
        missing = {w for w in words(field.type) if w not in row["type"].lower()}
        assert not missing, f"{name}: type column lacks {missing}"
        text = " ".join(row.values())
        for bound in bounds(field.type):
            assert any(b in text for b in bound), f"{name}: the row does not state {bound}"


def test_header_table_is_the_header_struct_in_order() -> None:
    rows = table_after("| # | field |")
    info = mi.type_info(Header)
    assert isinstance(info, mi.StructType) and info.array_like
    assert [names(r["field"])[0] for r in rows] == [f.name for f in info.fields]
    assert [int(r["#"]) for r in rows] == list(range(len(info.fields)))
    for row, field in zip(rows, info.fields, strict=True):
        want = {mi.IntType: "int", mi.StrType: "str"}[type(field.type)]
        assert row["msgpack type"] == want, field.name
        assert row["required"] == "**yes**" and field.required, field.name
        assert row["range"], field.name


def test_job_body_table_is_the_job_body_structs() -> None:
    check_body_table("Job body:", JobBody)


@pytest.mark.parametrize("cls", [ResultBody, ResultWire])
def test_result_body_table_is_the_result_structs(cls: type) -> None:
    # ResultBody (sealing) and ResultWire (opening) have the same fields; the wire twin
    # carries the decode-side bounds the table states.
    fields = struct_fields(cls)
    rows = {name for row in table_after("Result body:") for name in names(row["field"])}
    assert rows == set(fields)
    if cls is ResultWire:
        check_body_table("Result body:", cls)
