"""The named SQL statements of queries.sql, loaded once into ``QUERIES``.

Every statement ChronoSync runs lives in queries.sql under a ``-- name: NAME --`` header;
Python code refers to statements by name only and never builds SQL from pieces. The
tools (``chronosync_dev``) and the bench keep theirs in a queries.sql of their own, in
the same form, read by ``load`` and ``parse``.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split queries.sql into ``{name: statement}``; the description comments stay in."""
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def load(package: str) -> dict[str, str]:
    """The statements of the queries.sql shipped in ``package``."""
    return parse(resources.files(package).joinpath("queries.sql").read_text(encoding="utf-8"))


QUERIES: dict[str, str] = load("chronocore")
