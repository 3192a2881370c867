"""RELIABILITY.md names a test for every row; each exists, and the table keeps its 60 rows."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_reliability_table_names_exists():
    text = (ROOT / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 60
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, len(rows) + 1))
    named = re.findall(r"`([\w/]+\.py)::(\w+)`", text)
    assert len(named) >= 60
    for path, name in named:
        file = ROOT / "tests" / path.replace("rel/", "reliability/", 1)
        assert file.is_file(), path
        assert re.search(rf"^def {name}\(", file.read_text(), re.M), f"{path}::{name}"
    for row in rows:  # a test named in the row, or the row above's ("same test")
        assert "::" in row or "same test" in row, row
