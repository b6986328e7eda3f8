"""Choosing layers by name: exact names and globs over dotted module names."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["select_layers"]


def _pattern(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def select_layers(
    available: Sequence[str], patterns: str | Sequence[str], *, where: str = "the store"
) -> list[str]:
    """Names in ``available`` that ``patterns`` (names or globs) select, in ``available``'s order.

    Glob patterns work on dotted module names: ``*`` and ``?`` stay within one
    dotted part (``layer*`` is ``layer1``, ``layer2``... but not ``layer1.0``),
    ``**`` crosses dots (``layer1.**`` is everything inside ``layer1``), and
    ``[...]`` is a character class.

    Raises
    ------
    ValueError
        If a name or pattern selects nothing; the message lists ``available``.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen: set[str] = set()
    for want in patterns:
        if any(c in want for c in "*?["):
            rx = _pattern(want)
            hits = [n for n in available if rx.match(n)]
        else:
            hits = [want] if want in available else []
        if not hits:
            kind = "matches no layer" if any(c in want for c in "*?[") else "is not a layer"
            raise ValueError(
                f"{want!r} {kind} of {where}; available: {', '.join(available) or '(none)'}"
            )
        chosen.update(hits)
    if not chosen:
        raise ValueError(f"no layers given for {where}; name at least one")
    return [n for n in available if n in chosen]
