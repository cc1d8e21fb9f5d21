"""Text and Markdown tables."""

from __future__ import annotations

from segdistill.tables import markdown_table, text_table


def test_text_table_aligns_columns_under_a_rule():
    rows = [["model", "mIoU"], ["student", "0.5"], ["ensemble", "0.61"]]
    assert text_table(rows) == [
        "model     mIoU",
        "--------------",
        "student   0.5",
        "ensemble  0.61",
    ]
    assert text_table(rows, right_aligned=True) == [
        "model     mIoU",
        "--------------",
        "student    0.5",
        "ensemble  0.61",
    ]


def test_markdown_table():
    assert markdown_table([["a", "b"], ["1", "2"]]) == ["| a | b |", "|---|---|", "| 1 | 2 |"]
