"""What is stored of a command's output: its tail as UTF-8 text, never over 64 KiB of
UTF-8 whatever bytes the command wrote."""

from __future__ import annotations

from chronocore.runner import OUTPUT_TAIL_BYTES, output_text


def test_valid_output_within_the_bound_is_kept_as_written() -> None:
    assert output_text("héllo ✓\n".encode()) == "héllo ✓\n"


def test_invalid_bytes_become_replacement_characters_within_the_byte_bound() -> None:
    text = output_text(b"\xff" * OUTPUT_TAIL_BYTES)
    assert set(text) == {"\ufffd"}
    assert len(text.encode()) <= OUTPUT_TAIL_BYTES


def test_the_cut_keeps_the_end_and_never_splits_a_character() -> None:
    tail = b"\xfe" * (OUTPUT_TAIL_BYTES - 10) + b"the-end\n"
    text = output_text(tail)
    assert text.endswith("\ufffdthe-end\n")
    assert OUTPUT_TAIL_BYTES - 2 <= len(text.encode()) <= OUTPUT_TAIL_BYTES


def test_nul_bytes_which_postgres_text_refuses_are_replaced() -> None:
    assert output_text(b"a\x00b") == "a\ufffdb"
