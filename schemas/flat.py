"""Straight-line Avro body readers for flat records, generated from the schema.

A record whose fields are all `string`, `bytes`, `long`, `int`, `boolean` or a union of `null`
with one of these is read by code generated for exactly that field list: each field is a few
lines of byte arithmetic, with a fast path for the one-byte varints that nearly every length and
union index is. This reads the ledger record in about a third of fastavro's time, which matters
because every stage that consumes the ledger decodes every record.

A reader is only a fast path. It raises on anything it does not take as plainly valid: a varint
longer than one byte it cannot finish, a negative length, a union index out of range, a value out
of its type's range, invalid UTF-8, or a body that does not end exactly where the record does.
The caller then decodes the same bytes with fastavro, which gives the answer or the named error.
So a reader never decides what is malformed; it can only agree with fastavro or step aside
(`tests/unit/test_flat_reader.py` holds it to fastavro on valid and damaged bodies).
"""

from __future__ import annotations

from typing import Callable

_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_SIMPLE = {"string", "bytes", "long", "int", "boolean"}


class NotFlat(Exception):
    """The schema has a field type the generator does not read; use fastavro for it."""


def varint_tail(data: bytes, p: int, first: int) -> tuple[int, int]:
    """The rest of a zigzag varint whose first byte (`first`, continuation bit set) is read:
    (value, position after it). At most 10 bytes, as a 64-bit long has."""
    value = first & 0x7F
    shift = 7
    while True:
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
        b = data[p]
        p += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return (value >> 1) ^ -(value & 1), p


def _field_type(t) -> tuple[bool, str]:
    """(nullable, simple type) of a field's type, or NotFlat."""
    if isinstance(t, dict) and t.get("type") in _SIMPLE and len(t) == 1:
        t = t["type"]
    if isinstance(t, str) and t in _SIMPLE:
        return False, t
    if isinstance(t, list) and len(t) == 2 and t[0] == "null":
        nullable, inner = _field_type(t[1])
        if not nullable:
            return True, inner
    raise NotFlat(f"field type {t!r} is not read by a flat reader")


def _read(kind: str, target: str, pad: str) -> str:
    """Source lines that read one value of `kind` at `p` into `target`."""
    if kind in ("string", "bytes"):
        take = "data[p:e].decode()" if kind == "string" else "data[p:e]"
        return (f"{pad}n = data[p]\n"
                f"{pad}if n < 0x80 and not n & 1:\n"
                f"{pad}    p += 1\n"
                f"{pad}    n >>= 1\n"
                f"{pad}else:\n"
                f"{pad}    n, p = tail(data, p + 1, n) if n & 0x80 else ((n >> 1) ^ -(n & 1), p + 1)\n"
                f"{pad}    if n < 0:\n"
                f"{pad}        raise ValueError('negative length')\n"
                f"{pad}e = p + n\n"
                f"{pad}{target} = {take}\n"
                f"{pad}p = e\n")
    if kind == "boolean":
        return (f"{pad}n = data[p]\n"
                f"{pad}p += 1\n"
                f"{pad}if n > 1:\n"
                f"{pad}    raise ValueError('boolean out of range')\n"
                f"{pad}{target} = n == 1\n")
    low, high = _INT32 if kind == "int" else _INT64
    return (f"{pad}n = data[p]\n"
            f"{pad}if n & 0x80:\n"
            f"{_unrolled(target, pad + '    ')}"
            f"{pad}    if not {low} <= {target} <= {high}:\n"
            f"{pad}        raise ValueError('{kind} out of range')\n"
            f"{pad}else:\n"
            f"{pad}    p += 1\n"
            f"{pad}    {target} = (n >> 1) ^ -(n & 1)\n")


def _unrolled(target: str, pad: str) -> str:
    """A multi-byte varint (first byte `n`, at `p`) read as nested ifs, one per byte up to the 10
    a long can have: a timestamp takes 8 bytes, and a loop (or a call) costs twice as much."""
    lines = [f"{pad}n &= 0x7F\n"]
    for i in range(1, 10):
        inner = pad + "    " * (i - 1)
        # bytes 0-3 go into n and 4-9 into h, each below 2**30 until the end (CPython's one-digit
        # integers, several times cheaper to shift and or than wider ones)
        into, shift = ("n", 7 * i) if i < 4 else ("h", 7 * (i - 4))
        lines.append(f"{inner}b = data[p + {i}]\n"
                     + (f"{inner}h = b & 0x7F\n" if i == 4 else f"{inner}{into} |= (b & 0x7F) << {shift}\n")
                     + f"{inner}if not b & 0x80:\n"
                     + f"{inner}    p += {i + 1}\n"
                     + (f"{inner}    n |= h << 28\n" if i >= 4 else "")
                     + f"{inner}else:\n")
    lines.append(f"{pad + '    ' * 9}raise ValueError('varint longer than 10 bytes')\n")
    lines.append(f"{pad}{target} = (n >> 1) ^ -(n & 1)\n")
    return "".join(lines)


def reader(schema: dict, build: str = "dict", scope: dict | None = None) -> Callable[[bytes, int], object]:
    """A function `read(data, start)` for a flat record schema (raises NotFlat otherwise).

    `build` says what it returns: "dict" (field name to value, as fastavro gives), or a body of
    source lines that use `v0`, `v1`, ... and end in a `return` (names it uses come from
    `scope`)."""
    if schema.get("type") != "record":
        raise NotFlat("not a record")
    fields = schema["fields"]
    lines = ["def read(data, p):\n"]
    for i, field in enumerate(fields):
        nullable, kind = _field_type(field["type"])
        if nullable:
            lines.append("    n = data[p]\n"
                         "    p += 1\n"
                         "    if n == 0:\n"
                         f"        v{i} = None\n"
                         "    elif n == 2:\n"
                         f"{_read(kind, f'v{i}', '        ')}"
                         "    else:\n"
                         "        raise ValueError('union index out of range')\n")
        else:
            lines.append(_read(kind, f"v{i}", "    "))
    lines.append("    if p != len(data):\n"
                 "        raise ValueError('the body does not end where the record does')\n")
    names = [f["name"] for f in fields]
    if build == "dict":
        lines.append("    return {" + ", ".join(f"{n!r}: v{i}" for i, n in enumerate(names)) + "}\n")
    else:
        lines.append(build)
    namespace = {"tail": varint_tail, **(scope or {})}
    exec("".join(lines), namespace)  # noqa: S102 - generated from the schema's own field list
    return namespace["read"]


_SMALL = tuple(bytes((i,)) for i in range(128))  # a varint below 128 is its own byte


def varint(z: int) -> bytes:
    """The base-128 varint of a non-negative (already zigzagged) integer, low group first."""
    if 0x2_0000_0000_0000 <= z < 0x100_0000_0000_0000:  # 8 groups: every timestamp of this century
        return bytes(((z & 0x7F) | 0x80, (z >> 7 & 0x7F) | 0x80, (z >> 14 & 0x7F) | 0x80, (z >> 21 & 0x7F) | 0x80,
                      (z >> 28 & 0x7F) | 0x80, (z >> 35 & 0x7F) | 0x80, (z >> 42 & 0x7F) | 0x80, z >> 49))
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def long_bytes(n: int) -> bytes:
    """An Avro long (or int): zigzag, then varint."""
    return varint((n << 1) ^ (n >> 63))


def _write(kind: str, value: str, pad: str) -> str:
    """Source lines that append one value of `kind`, held in `value`, to `out`."""
    if kind in ("string", "bytes"):
        take = f"{pad}s = {value}.encode()\n" if kind == "string" else (
            f"{pad}s = {value}\n"
            f"{pad}if type(s) is not bytes:\n"
            f"{pad}    raise TypeError('bytes expected')\n")
        return (take
                + f"{pad}n = len(s)\n"
                + f"{pad}out += small[n << 1] if n < 64 else varint(n << 1)\n"
                + f"{pad}out += s\n")
    if kind == "boolean":
        return (f"{pad}if {value} is True:\n"
                f"{pad}    out += b'\\x01'\n"
                f"{pad}elif {value} is False:\n"
                f"{pad}    out += b'\\x00'\n"
                f"{pad}else:\n"
                f"{pad}    raise TypeError('boolean expected')\n")
    low, high = _INT32 if kind == "int" else _INT64
    return (f"{pad}x = {value}\n"
            f"{pad}if type(x) is not int or not {low} <= x <= {high}:\n"
            f"{pad}    raise TypeError('{kind} expected')\n"
            f"{pad}x = (x << 1) ^ (x >> 63)\n"
            f"{pad}out += small[x] if x < 128 else varint(x)\n")


def writer(schema: dict, header: bytes = b"") -> Callable[[object], bytes]:
    """A function `write(record)` for a flat record schema (raises NotFlat otherwise): `header`
    then the Avro body, with each field read as an attribute of `record`.

    Like a reader it is a fast path: it raises TypeError on a value whose type is not exactly
    the field's (a bool for a long, a str subclass's surprises), and the caller encodes with
    fastavro, which encodes or names the problem. Where it returns, its bytes are fastavro's."""
    if schema.get("type") != "record":
        raise NotFlat("not a record")
    lines = ["def write(record):\n", "    out = bytearray(header)\n"]
    for field in schema["fields"]:
        nullable, kind = _field_type(field["type"])
        value = f"record.{field['name']}"
        if nullable:
            lines.append(f"    v = {value}\n"
                         "    if v is None:\n"
                         "        out += b'\\x00'\n"
                         "    else:\n"
                         "        out += b'\\x02'\n"
                         f"{_write(kind, 'v', '        ')}")
        else:
            lines.append(_write(kind, value, "    "))
    lines.append("    return bytes(out)\n")
    namespace = {"small": _SMALL, "varint": varint, "header": header}
    exec("".join(lines), namespace)  # noqa: S102 - generated from the schema's own field list
    return namespace["write"]
