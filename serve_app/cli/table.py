"""Plain-text tables for a terminal: a header, a rule, left-aligned text and right-aligned numbers.

>>> print(render(["model", "req/s"], [["shapes-det/1", 12.5], ["ocr/1", None]]))
model         req/s
------------  -----
shapes-det/1   12.5
ocr/1             -
"""
from __future__ import annotations

from typing import Any, Sequence


def cell(value: Any) -> str:
    """A value as a table shows it: ``None`` as ``-``, floats with one decimal (three below 1).

    >>> [cell(v) for v in (None, 5.0, 0.25, 12, 96.54)]
    ['-', '5.0', '0.250', '12', '96.5']
    """
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if 0 < abs(value) < 1 else f"{value:.1f}"
    return str(value)


def render(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The rows under the header, columns as wide as their widest cell; numbers (and ``-``) right-aligned."""
    texts = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in texts)]) for i, h in enumerate(header)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) and bool(rows)
               for i in range(len(header))]

    def line(values: Sequence[str], align: bool = True) -> str:
        parts = [v.rjust(w) if align and numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(header), align=True), line(["-" * w for w in widths], align=False),
                      *(line(r) for r in texts)])
