"""JSON without `import json`: the `_json` C extension's scanner and encoder, called directly.

containerd's shim starts the runtime five times per container (create, start, state, kill,
delete), and each start of satchel-runc is an interpreter whose imports are on the clock.
`import json` costs ~5 ms here because json.decoder and json.scanner import `re` (and `re`
imports enum), although the C scanner they end up using needs none of it. These two functions
build the same C scanner and encoder json.loads/json.dumps use (Python 3.8 to 3.13 share
their signatures) and fall back to the json package where `_json` is missing.

Differences from json: no `indent` (compact separators only), keys kept in insertion order,
and the errors are plain ValueError with the C scanner's position.
"""

from __future__ import annotations

try:
    import _json
except ImportError:  # an interpreter built without the accelerator: the real thing
    _json = None

_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _Context:
    """The attributes the C scanner reads from json.JSONDecoder at construction."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict = {}


_scanner = None
_WHITESPACE = " \t\n\r"


def loads(text):
    """json.loads for str or UTF-8 bytes; ValueError on anything that is not one document."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    if _json is None:
        import json
        return json.loads(text)
    global _scanner
    if _scanner is None:
        _scanner = _json.make_scanner(_Context())
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scanner(text, start)
    except StopIteration as stop:
        raise ValueError(f"expecting a value at character {stop.value}") from None
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"extra data at character {end}")
    return value


def _unencodable(value):
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def dumps(value) -> str:
    """json.dumps(value, separators=(",", ":")) for dicts, lists, strings, numbers, None."""
    if _json is None:
        import json
        return json.dumps(value, separators=(",", ":"))
    # (markers, default, encoder, indent, key_separator, item_separator, sort_keys, skipkeys,
    #  allow_nan): what json.encoder passes for a compact dumps; fresh markers each call, as
    # there (they catch cycles)
    encoder = _json.make_encoder({}, _unencodable, _json.encode_basestring_ascii, None,
                                 ":", ",", False, False, True)
    return "".join(encoder(value, 0))
