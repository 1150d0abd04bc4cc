"""What every validation test asks of an error: it names the right field, in words."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from chronocore.model import ValidationError


def assert_wordy(error: ValidationError) -> None:
    """An error a human can read: non-empty, made of words, same as str(error)."""
    assert isinstance(error.message, str)
    assert error.message.strip(), "the error message is empty"
    assert re.search(r"[A-Za-z]{2,}\W+[A-Za-z-]{2,}", error.message), error.message
    assert str(error) == error.message


def assert_rejected_by(parse: Callable[[], object], field: str | None, *,
                       given: object) -> ValidationError:
    """``parse()`` raises a ValidationError naming ``field``, in words."""
    try:
        accepted = parse()
    except ValidationError as error:
        assert error.field == field, f"error names {error.field!r}, expected {field!r}"
        assert_wordy(error)
        return error
    pytest.fail(f"accepted {given!r} as {accepted!r}; expected a ValidationError on {field!r}")
