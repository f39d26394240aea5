"""The wire between the test process and the candidate process (inside the sandbox). Standard library only.

The candidate's values cross as *plain data*: a JSON document whose containers are tagged, decoded by the test
process into fresh objects of built-in types. Whatever the candidate does to its own interpreter, the test process
only ever sees values it built itself. Objects that are not plain data (instances of the candidate's classes, its
functions, bound methods) cross as *handles*: ``["h", id, flags]``; the test process wraps them in a proxy whose
comparisons are by identity and whose truth value is refused, so no object of the candidate's can decide an
assertion. Messages are length-prefixed JSON documents.
"""

import json
import os

_HEAPTYPE = 1 << 9
_SCALARS = (bool, int, float, str, type(None))
_DATETIME = ("date", "datetime", "time", "timedelta")
_BIG_INT_BITS = 4000 * 3  # below Python's default 4300-digit limit on int <-> decimal text
_CAP = 1 << 30  # no single message may exceed 1 GiB (the memory limit stops it first)


class WireError(Exception):
    """A malformed message: the peer is not following the protocol."""


# ------------------------------------------------------------------------------------------------ framing
def send(fd, obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    data = len(body).to_bytes(4, "little") + body
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n):
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(fd):
    size = int.from_bytes(_read_exact(fd, 4), "little")
    if size > _CAP:
        raise WireError(f"message of {size} bytes")
    try:
        return json.loads(_read_exact(fd, size))
    except ValueError as e:
        raise WireError(f"not JSON: {e}") from None


# ------------------------------------------------------------------------------------------------ candidate side
def encode(value, handle_of, _depth=0):
    """``value`` as tagged JSON; objects that are not plain data become handles via ``handle_of(obj) -> list``.

    Subclasses of built-in types are read through the base type's C methods (an overridden ``__eq__`` or
    ``__iter__`` is never consulted by the test side anyway: it rebuilds the value from these tags)."""
    if _depth > 200:
        raise RecursionError("value nested deeper than 200 levels")
    t = type(value)
    if t is int and value.bit_length() > _BIG_INT_BITS:
        return ["X", hex(value)]  # (decimal text of huge ints is capped by sys.get_int_max_str_digits, hex is not)
    if t in _SCALARS:
        return value  # (json writes NaN and Infinity, and reads them back)
    d = _depth + 1
    if issubclass(t, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(value)
    if issubclass(t, int):
        return encode(int.__index__(value), handle_of, d)
    if issubclass(t, float):
        return float.__float__(value)
    if issubclass(t, str):
        return str.__str__(value)
    if issubclass(t, (bytes, bytearray)):
        return ["B", bytes(value).hex()]
    if issubclass(t, complex):
        return ["C", complex.__repr__(value)]
    if issubclass(t, tuple):
        return ["T", [encode(v, handle_of, d) for v in tuple.__iter__(value)]]
    if issubclass(t, list):
        return ["L", [encode(v, handle_of, d) for v in list.__iter__(value)]]
    if issubclass(t, dict):
        return ["D", [[encode(k, handle_of, d), encode(v, handle_of, d)] for k, v in dict.items(value)]]
    if issubclass(t, frozenset):
        return ["Z", [encode(v, handle_of, d) for v in frozenset.__iter__(value)]]
    if issubclass(t, set):
        return ["E", [encode(v, handle_of, d) for v in set.__iter__(value)]]
    if t is range:
        return ["R", [value.start, value.stop, value.step]]
    if t.__module__ == "decimal" and t.__name__ == "Decimal" and not t.__flags__ & _HEAPTYPE:
        return ["M", str(value)]
    if t.__module__ == "collections" and t.__name__ == "deque" and not t.__flags__ & _HEAPTYPE:
        return ["Q", [encode(v, handle_of, d) for v in list(value)]]
    if t.__module__ == "datetime" and not t.__flags__ & _HEAPTYPE and t.__name__ in _DATETIME:
        if t.__name__ == "timedelta":
            return ["DT", ["timedelta", [value.days, value.seconds, value.microseconds]]]
        return ["DT", [t.__name__, value.isoformat()]]
    if t.__module__ == "numpy" and not t.__flags__ & _HEAPTYPE and hasattr(value, "tolist"):
        if t.__name__ == "ndarray" and value.dtype.kind in "biufc":  # the tests may want an array back
            return ["A", [value.dtype.str, encode(value.tolist(), handle_of, d)]]
        return encode(value.tolist(), handle_of, d)  # numpy scalars, object arrays
    if not t.__flags__ & _HEAPTYPE and hasattr(t, "__next__"):  # map, zip, generators: consumed now
        return ["I", [encode(v, handle_of, d) for v in value]]
    return handle_of(value)


# ------------------------------------------------------------------------------------------------ test side
def decode(doc, make_handle, hooks=None, _depth=0):
    """Build a fresh value of built-in types from ``doc``; ``make_handle(id, flags)`` builds the proxy of a handle.
    ``hooks`` maps the extra tags one side accepts to ``hook(body, decode_one)`` ("N" named objects on the candidate
    side, "m" mutable containers on the test side)."""
    if _depth > 210:
        raise WireError("value nested too deeply")
    t = type(doc)
    if t in _SCALARS:
        return doc
    if t is not list or len(doc) < 2 or type(doc[0]) is not str:
        raise WireError("bad value")
    tag, body = doc[0], doc[1]
    d = _depth + 1
    if hooks and tag in hooks:
        return hooks[tag](body, lambda sub: decode(sub, make_handle, hooks, d))
    if tag == "L":
        return [decode(v, make_handle, hooks, d) for v in body]
    if tag == "T":
        return tuple(decode(v, make_handle, hooks, d) for v in body)
    if tag == "D":
        return {decode(k, make_handle, hooks, d): decode(v, make_handle, hooks, d) for k, v in body}
    if tag == "E":
        return {decode(v, make_handle, hooks, d) for v in body}
    if tag == "Z":
        return frozenset(decode(v, make_handle, hooks, d) for v in body)
    if tag == "I":
        return iter([decode(v, make_handle, hooks, d) for v in body])
    if tag == "A":  # a numeric numpy array: a list unless the receiving side asked for arrays (hooks)
        return decode(body[1], make_handle, hooks, d)
    if tag == "X":
        return int(str(body), 16)
    if tag == "B":
        return bytes.fromhex(body)
    if tag == "C":
        return complex(body)
    if tag == "R":
        return range(int(body[0]), int(body[1]), int(body[2]))
    if tag == "M":
        import decimal

        return decimal.Decimal(str(body))
    if tag == "Q":
        import collections

        return collections.deque(decode(v, make_handle, hooks, d) for v in body)
    if tag == "DT":
        import datetime

        kind, value = str(body[0]), body[1]
        if kind == "timedelta":
            return datetime.timedelta(days=int(value[0]), seconds=int(value[1]), microseconds=int(value[2]))
        if kind not in _DATETIME:
            raise WireError(f"bad datetime kind {kind!r}")
        return getattr(datetime, kind).fromisoformat(str(value))
    if tag == "h":
        return make_handle(int(body), str(doc[2]) if len(doc) > 2 else "")
    raise WireError(f"unknown tag {tag!r}")
