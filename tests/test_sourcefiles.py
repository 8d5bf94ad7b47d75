"""Property tests of what a source file's bytes count as (``store/sourcefiles.py``): the
``raw_chars``/``parsed_chars`` of a row are characters, whichever path counted them."""

from __future__ import annotations

from docwatch.store.sourcefiles import CHUNK, count_chars, digest_and_chars
from hypothesis import example, given, settings
from hypothesis import strategies as st


@settings(max_examples=300)
@given(st.text())
@example("plain ASCII")
@example("café — “quoted” 🙂")
def test_utf8_text_counts_its_characters(text: str) -> None:
    assert count_chars(text.encode("utf-8")) == len(text)


@settings(max_examples=300)
@given(st.binary())
@example(b"\xff\xfe not utf-8 \x80")
def test_any_bytes_count_their_non_continuation_bytes(data: bytes) -> None:
    """Undecodable bytes count one each, except continuation bytes (0x80-0xBF)."""
    assert count_chars(data) == sum(1 for b in data if not 0x80 <= b < 0xC0)


def test_a_streamed_file_counts_as_its_bytes_in_memory(tmp_path) -> None:
    """A large file is counted a chunk at a time: a character may straddle two chunks."""
    text = "é" + "a" * (CHUNK - 3) + "ß" + "ü" * 1000 + "plain"  # ß's two bytes: both chunks
    assert "ß".encode() == text.encode()[CHUNK - 1 : CHUNK + 1]
    path = tmp_path / "big.txt"
    path.write_bytes(text.encode("utf-8"))
    _, chars = digest_and_chars(path)
    assert chars == len(text) == count_chars(path.read_bytes())
