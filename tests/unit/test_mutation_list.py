"""The mutation list (tests/mutation/mutations.toml) stays in step with the code.

`make mutation-test` takes a while and is not run on every change: a refactor that moves
a clause a mutation anchors on would leave that guarantee unchecked until it is. These
checks are cheap, so `make test` runs them: every anchor occurs exactly once, every named
test file exists, and the list is sound against the README's guarantees.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _runner():  # the mutation runner is a script, not a package
    spec = importlib.util.spec_from_file_location("mutation_run",
                                                  ROOT / "tests" / "mutation" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


RUN = _runner()
SETTINGS, MUTATIONS = RUN.load()


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_anchor_occurs_exactly_once(mutation) -> None:
    assert RUN.applies(ROOT, mutation) == "yes", (
        f"{mutation.name}: update its find/replace in tests/mutation/mutations.toml so it "
        "still breaks the same clause")


@pytest.mark.parametrize("mutation", [m for m in MUTATIONS if m.tests], ids=lambda m: m.name)
def test_each_named_test_file_exists(mutation) -> None:
    for test in (*mutation.tests, *mutation.others):
        path = test.split("::", 1)[0]
        assert (ROOT / path).exists(), f"{mutation.name}: {path} does not exist"


def test_the_list_is_sound() -> None:
    assert RUN.check_list(SETTINGS, MUTATIONS, (ROOT / "README.md").read_text()) == []
