"""The streaming detokenizer: whole characters only, stop strings cut exactly even across token boundaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.generate.stream import TextStream, cut_at_stop


class ByteTokenizer:
    """Token i < 256 is byte i; a few longer tokens on top, like BPE merges."""

    extra = [b"Us", b"er:", b"\n\n", "é".encode(), "😀".encode()[:2], "😀".encode()[2:]]

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(bytes([i]) if i < 256 else self.extra[i - 256] for i in ids)

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(data)


TOK = ByteTokenizer()


def _stream(ids: list[int], stop: list[str] = ()) -> tuple[list[str], TextStream]:
    s = TextStream(TOK, stop)
    pieces = [s.push(i) for i in ids] + [s.finish()]
    return pieces, s


def test_multibyte_character_split_over_tokens_is_never_split() -> None:
    emoji = list("😀".encode())  # 4 byte-tokens
    pieces, _ = _stream([ord("a")] + emoji + [ord("b")])
    assert pieces == ["a", "", "", "", "😀", "b", ""]
    pieces, _ = _stream([260, 261])  # the emoji as two 2-byte tokens
    assert pieces == ["", "😀", ""]
    assert all("\ufffd" not in p for p in pieces)


def test_incomplete_character_at_the_end_becomes_a_replacement() -> None:
    pieces, _ = _stream([ord("x"), 260])
    assert "".join(pieces) == "x\ufffd"


def test_stop_string_across_token_boundaries_is_cut_exactly() -> None:
    ids = TOK.encode_bytes(b"Hello") + [258, 256, 257] + TOK.encode_bytes(b" more")  # "Hello" "\n\n" "Us" "er:"
    pieces, s = _stream(ids, stop=["\n\nUser:"])
    assert "".join(pieces) == "Hello"
    assert s.stopped
    # nothing that could become the stop string was shown before it was ruled in or out
    assert pieces[5] == ""  # after "\n\n" the text is held back


def test_held_back_text_is_released_when_the_stop_string_does_not_complete() -> None:
    ids = TOK.encode_bytes(b"ab\n\nUs!")
    pieces, s = _stream(ids, stop=["\n\nUser:"])
    assert "".join(pieces) == "ab\n\nUs!" and not s.stopped
    assert pieces[: ids.index(ord("!")) + 1][-1] == "\n\nUs!"


def test_earliest_of_several_stop_strings_wins() -> None:
    pieces, s = _stream(TOK.encode_bytes(b"one two three"), stop=["three", "two"])
    assert "".join(pieces) == "one " and s.stopped


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="ab\n:😀é", max_size=30),
    st.lists(st.text(alphabet="ab\n:😀", min_size=1, max_size=4), max_size=3),
)
def test_streamed_pieces_equal_the_cut_whole_text(text: str, stop: list[str]) -> None:
    """Property: joining the pieces gives the full text cut at the first stop string, for any tokenisation."""
    ids = TOK.encode_bytes(text.encode())
    pieces, s = _stream(ids, stop)
    expected, found = cut_at_stop(text, stop)
    assert "".join(pieces) == expected
    assert s.stopped == found
