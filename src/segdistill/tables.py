"""Tables as text: aligned columns for the terminal, Markdown for results pages."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[str]], right_aligned: bool = False) -> list[str]:
    """Lines of aligned columns, a rule under the header (`rows[0]`). Columns are
    left-aligned; with `right_aligned`, every column but the first is right-aligned (for
    numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(width) if right_aligned and i > 0 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    lines = [line(row) for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Header row (`rows[0]`) and body rows as a Markdown (pipe) table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]
