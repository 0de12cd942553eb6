"""One safe JSON reader for every JSON file or line a user hands v2m.

`json.loads` recurses once per nesting level: `[` repeated 100000 times raises
RecursionError, which would end the command as an internal error. Here every way a
document can be unusable (not UTF-8, not JSON, nested deeper than `MAX_DEPTH`) is the
caller's one-line error class (BundleError for a bundle's config.json or manifest.json,
InputError for a batch manifest line), naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import V2MError

__all__ = ["MAX_DEPTH", "loads", "load_file"]

# v2m's own documents nest at most 6 levels (manifest.json: graphs/fp32/step/profile/x/min);
# 64 leaves room for any honest one and stays far below Python's recursion limit.
MAX_DEPTH = 64


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, d + 1)
            stack.extend((v, d + 1) for v in node if isinstance(v, (dict, list)))
    return deepest


def loads(text: str | bytes, where: str, error: type[V2MError], hint: str = "") -> Any:
    """Parse `text`; `error(f"{where}: ...{hint}")` (one line) when it is not usable JSON.

    Args:
        where: what the text is, for the message (a path, "manifest.jsonl line 3").
        error: the V2MError subclass to raise.
        hint: appended to the message, e.g. "; re-export with `v2m export`".
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        raise error(f"{where}: not UTF-8 text{hint}") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}){hint}") from None
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {MAX_DEPTH} levels{hint}") from None
    if _depth(data) > MAX_DEPTH:
        raise error(f"{where}: JSON nested deeper than {MAX_DEPTH} levels{hint}")
    return data


def load_file(path: str | Path, error: type[V2MError], hint: str = "") -> Any:
    """Read and parse a JSON file (see `loads`); an unreadable file is `error` too."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}){hint}") from None
    return loads(raw, str(path), error, hint)
