"""The parts of providers/llama_runtime.py that need no model: text out of token pieces."""

from __future__ import annotations

import pytest

from moa_cli.providers.llama_runtime import _Text


def feed_all(pieces: list[bytes], stops: list[str]) -> tuple[list[str], bool]:
    text = _Text(stops)
    shown: list[str] = []
    for piece in pieces:
        out, stopped = text.feed(piece)
        if out:
            shown.append(out)
        if stopped:
            return shown, True
    rest, _ = text.feed(b"", final=True)
    return [*shown, rest] if rest else shown, False


def test_utf8_split_across_tokens_comes_out_whole() -> None:
    snow = "☃".encode()  # three bytes, one per token here
    shown, stopped = feed_all([b"a", snow[:1], snow[1:2], snow[2:], b"b"], [])
    assert "".join(shown) == "a☃b" and not stopped
    assert all("\ufffd" not in piece for piece in shown)


def test_a_stop_string_across_pieces_ends_the_text_before_it() -> None:
    shown, stopped = feed_all([b"Hello </", b"s> never shown"], ["</s>"])
    assert stopped and "".join(shown) == "Hello "


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [([b"a <", b"b"], ["a ", "<b"]), ([b"x </"], ["x ", "</"])],
    ids=["held-then-released", "held-until-the-end"],
)
def test_a_possible_stop_string_start_is_held_back_not_lost(pieces: list[bytes], expected: list[str]) -> None:
    shown, stopped = feed_all(pieces, ["</s>"])
    assert not stopped and shown == expected


def test_bytes_that_are_not_utf8_become_replacement_characters_at_the_end() -> None:
    shown, _ = feed_all([b"ok", b"\xe2\x98"], [])
    assert "".join(shown) == "ok\ufffd"
