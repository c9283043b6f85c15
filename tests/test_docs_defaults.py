"""Every default the README and docs/params*.md show is the schema's (src/cifarlab/params.py).

A table with `key` and `default` columns is read row by row: each backticked dotted key of
the first cell that the schema has must come with a default cell whose items (one per key,
comma-separated) equal the schema's default. Items in backticks are YAML values; an item
without backticks counts only when it is a number or a boolean (prose like "the class's
defaults" is left alone). params.yaml itself must hold the schema's defaults
(test_params.py), so the docs, the file and the code cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cifarlab.params import Params

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs/params.md", *sorted((ROOT / "docs/params").glob("*.md"))]
DEFAULTS = Params().model_dump(mode="json")
_KEY = re.compile(r"`([a-z_]+(?:\.[A-Za-z0-9_]+)+|seed)`")


def schema_default(key: str):
    node = DEFAULTS
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def split_items(cell: str) -> list[str]:
    """Comma-separated items, commas inside backticks or brackets kept."""
    items, depth, tick, cur = [], 0, False, ""
    for c in cell:
        tick = not tick if c == "`" else tick
        depth += (c in "[{") - (c in "]}") if not tick else 0
        if c == "," and depth == 0 and not tick:
            items.append(cur.strip())
            cur = ""
        else:
            cur += c
    return items + [cur.strip()] if cur.strip() else items


def item_value(item: str):
    """(True, value) when the item states a value; (False, None) for prose."""
    if item.startswith("`") and item.endswith("`") and item.count("`") == 2:
        return True, yaml.safe_load(item[1:-1])
    try:
        value = yaml.safe_load(item)
    except yaml.YAMLError:
        return False, None
    return (True, value) if isinstance(value, (int, float, bool)) else (False, None)


def rows_with_defaults(path: Path):
    header = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(cells[0]) <= {"-", " "} or "default" not in header or header[0] != "key":
            continue
        yield n, cells[0], cells[header.index("default")]


def cases():
    for doc in DOCS:
        for n, key_cell, default_cell in rows_with_defaults(doc):
            keys = []
            for k in _KEY.findall(key_cell):
                try:
                    schema_default(k)
                    keys.append(k)
                except KeyError:
                    pass
            if keys:
                yield pytest.param(keys, default_cell, id=f"{doc.relative_to(ROOT)}:{n}")


CASES = list(cases())


def test_the_docs_show_defaults_at_all():
    """Guard the reader: the tables are found (README and docs/params.md show dozens)."""
    assert len(CASES) >= 30, len(CASES)


@pytest.mark.parametrize("keys, cell", CASES)
def test_each_shown_default_is_the_schemas(keys, cell):
    items = split_items(cell)
    stated = [(k, item_value(i)) for k, i in zip(keys, items)]
    wrong = [
        f"{k}: docs say {v!r}, the schema {schema_default(k)!r}"
        for k, (is_value, v) in stated
        if is_value and v != schema_default(k)
    ]
    assert not wrong, "; ".join(wrong)


def test_the_reader_catches_a_wrong_default():
    assert item_value("`0.05`") == (True, 0.05) and item_value("10") == (True, 10)
    assert item_value("the class's defaults") == (False, None)
    assert split_items("`ratio`, `[1, 2]`, 0") == ["`ratio`", "`[1, 2]`", "0"]
