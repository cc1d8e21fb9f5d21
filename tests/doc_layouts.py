"""Reading the JSON layouts the docs write out by hand, to compare them with the files the
code writes: a layout becomes a key tree {key: its key tree, or None for a leaf}."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def braced_tree(text: str) -> dict:
    """The key tree of "{a, b {c, d}, e prose, f: {g}}" as the docs write layouts: remarks
    "(...)" and shapes "[...]" left out, a list of records "[{...}]" read as its record,
    prose after a key skipped; "{NAME: ...}" is a mapping with free keys, read as {"*": the
    tree of its values}. The tree of the first "{" in `text`."""
    remark = r"\([^()]*\)|\[[^\[\]{}]*\]"
    while re.search(remark, text):
        text = re.sub(remark, "", text)
    text = re.sub(r"\[\s*\{", "{", re.sub(r"\}\s*\]", "}", text))
    tokens = re.findall(r"[A-Za-z_][\w.]*|[{}:,]", text)

    def parse(at: int) -> tuple[dict, int]:  # at: just after a "{"
        tree: dict = {}
        while tokens[at] != "}":
            words = []
            while tokens[at] not in ",{}:":
                words, at = [*words, tokens[at]], at + 1
            free = tokens[at] == ":"
            at += free
            value = None
            if tokens[at] == "{":
                value, at = parse(at + 1)
                at += 1
            while tokens[at] not in ",}":  # prose after the value
                at += 1
            if words:
                tree["*" if free else words[0]] = value
            at += tokens[at] == ","
        return tree, at

    return parse(tokens.index("{") + 1)[0]


def json_block_tree(block: str) -> dict:
    """The key tree of a ```json example block: its quoted names before a ":", with the
    keys below each "{...}", a list of records "[{...}]" read as its record; values
    (placeholders such as [H, W] or "...") left out."""
    block = re.sub(r"\[\s*\{", "{", re.sub(r"\}\s*\]", "}", block))
    tokens = [key or brace for key, brace in re.findall(r'"([^"]*)"\s*:|([{}])', block)]

    def parse(at: int) -> tuple[dict, int]:  # at: just after a "{"
        tree: dict = {}
        while tokens[at] != "}":
            name, at = tokens[at], at + 1
            tree[name] = None
            if tokens[at] == "{":
                tree[name], at = parse(at + 1)
                at += 1
        return tree, at

    return parse(tokens.index("{") + 1)[0]


def key_tree(value: object) -> object:
    """The keys of a written JSON value, nested as the trees above give them (a list of
    records: its first record's)."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = value[0]
    if isinstance(value, dict):
        return {key: key_tree(item) for key, item in value.items()}
    return None


def layout_differences(documented: object, written: object, path: str = "") -> list[str]:
    """Where the keys of a written JSON value differ from a documented key tree, every
    record of a list checked; [] when they agree."""
    if not isinstance(documented, dict) or written is None:  # a leaf, or null
        return []
    if isinstance(written, list) and written and isinstance(written[0], dict):
        return [d for record in written for d in layout_differences(documented, record, path)]
    if not isinstance(written, dict):
        return [f"{path}: a dict documented, {type(written).__name__} written"]
    if "*" in documented:
        return [
            d
            for key, value in written.items()
            for d in layout_differences(documented["*"], value, f"{path}.{key}")
        ]
    if set(documented) != set(written):
        return [f"{path}: documented {sorted(documented)}, written {sorted(written)}"]
    return [
        d
        for key in documented
        for d in layout_differences(documented[key], written[key], f"{path}.{key}")
    ]
