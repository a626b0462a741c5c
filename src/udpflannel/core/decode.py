"""The one JSON decoder for every value read from etcd (the config, leases). Pure, total.

`decode_json(raw, limit)` takes arbitrary bytes and returns the JSON document they hold,
or raises `Rejected` with the reason ("is not UTF-8 (...)", "is nested deeper than 32
...": the caller names the value) -- and nothing else, whatever the bytes. The typed
decoders on top of it (`core.subnet.parse_lease`, `core.config.parse_config`) turn a
rejection into their own error (LeaseParseError, ConfigError). Rejected are:

- a value longer than `limit` bytes (checked first: nothing else is done with it);
- bytes that are not UTF-8 (json.loads would guess UTF-16 or UTF-32 from bytes; Go's
  encoding/json, which flanneld uses, reads UTF-8 only), and a string holding a lone UTF-16
  surrogate escape ("\\ud800": no UTF-8 spelling, so it could not even be logged);
- text that is not JSON;
- arrays and objects nested deeper than MAX_DEPTH: a flannel document needs 3 levels
  (config -> Backend -> an option); json.loads recurses once per level and would raise
  RecursionError on a few thousand. The depth is measured before parsing, by a scan of the
  brackets outside strings; a document with fewer than MAX_DEPTH brackets in all (every
  real one) skips even that;
- NaN, Infinity and -Infinity (Python's json accepts them; JSON and Go do not);
- integers outside int64 and floats that overflow (1e999): numbers no field can hold;
- an object with the same key twice (json.loads keeps the last one silently).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Union

from ..errors import Rejected

MAX_DEPTH = 32  # arrays/objects inside each other
# What one value may be. flanneld writes leases of ~150 bytes (vxlan, wireguard: a MAC or a
# key in BackendData) and configs of a few hundred; etcd takes up to 1.5 MiB by default.
LEASE_LIMIT = 64 << 10
CONFIG_LIMIT = 64 << 10
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
_INT_DIGITS = 19  # int64 has at most 19 digits: longer is out of range (leading zeros are not JSON)

# A JSON string (with its escapes) or one bracket; what lies between is skipped.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[\[\]{}]', re.DOTALL)
# \uD800-\uDFFF: only these escapes can make a lone surrogate
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects, counting only brackets outside strings
    (an unterminated string runs to the end of the text)."""
    depth = deepest = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif c in "]}":
            depth -= 1
    return deepest


def _constant(name: str) -> Any:
    raise Rejected(f"holds {name}, which is not a JSON number")


def _int(s: str) -> int:
    if len(s.lstrip("-")) > _INT_DIGITS:
        raise Rejected(f"holds the number {_clip(s)}, out of range (integers must fit in 64 bits)")
    v = int(s)
    if not INT_MIN <= v <= INT_MAX:
        raise Rejected(f"holds the number {s}, out of range (integers must fit in 64 bits)")
    return v


def _float(s: str) -> float:
    v = float(s)
    if math.isinf(v):
        raise Rejected(f"holds the number {_clip(s)}, out of range (it overflows a 64-bit float)")
    return v


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise Rejected(f"has the key {_clip(repr(k))} twice in one object")
            seen.add(k)
    return doc


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else f"{s[:n]}... ({len(s)} characters)"


def printable(s: str, n: int = 120) -> str:
    """`s` fit for one log line: control and non-ASCII characters escaped, clipped to ~n."""
    if not (s.isascii() and s.isprintable()):
        s = s.encode("unicode_escape").decode("ascii")
    return _clip(s, n)


def _strings(doc: Any):
    """Every string in a document, keys included (only for the rare surrogate check)."""
    todo = [doc]
    while todo:
        x = todo.pop()
        if isinstance(x, str):
            yield x
        elif isinstance(x, list):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend(x)
            todo.extend(x.values())


def decode_json(raw: Union[bytes, str], limit: int) -> Any:
    """The JSON document in `raw` (at most `limit` bytes). Raises Rejected, and only that."""
    if isinstance(raw, str):  # tests and fakes; etcd hands bytes
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > limit:
        raise Rejected(f"is {len(raw)} bytes, more than the {limit} a value may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(f"is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        raise Rejected(f"is nested deeper than {MAX_DEPTH} arrays/objects")
    try:
        doc = json.loads(text, parse_constant=_constant, parse_int=_int, parse_float=_float,
                         object_pairs_hook=_object)  # fmt: skip
    except Rejected:
        raise
    except (ValueError, RecursionError) as e:  # RecursionError: cannot happen after the depth check
        raise Rejected(f"is not JSON ({_clip(str(e), 120)})") from None
    if _SURROGATE_ESCAPE.search(text):
        for s in _strings(doc):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise Rejected("holds a string with a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    return doc
