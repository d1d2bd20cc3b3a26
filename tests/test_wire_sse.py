"""The one SSE decoder (moa_cli/providers/sse.py), fed raw bytes as a server would split them."""

from __future__ import annotations

import pytest

from moa_cli.providers.sse import Event, EventTooLarge, SSEDecoder


def decode(*chunks: bytes, max_event: int | None = None) -> tuple[list[Event], SSEDecoder]:
    decoder = SSEDecoder(max_event=max_event)
    events = [e for c in chunks for e in decoder.feed(c)]
    return [*events, *decoder.end()], decoder


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_multi_line_data_is_joined_with_newlines_for_every_line_end(eol: bytes) -> None:
    events, _ = decode(b"data: one" + eol + b"data:two" + eol + eol)
    assert events == [Event("one\ntwo")]


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    events, _ = decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n")
    assert [e.data for e in events] == ["a", "b"]


def test_comments_event_id_and_retry() -> None:
    events, decoder = decode(b": hello\nevent: delta\nid: 42\nretry: 1500\nretry: soon\ndata: x\n\n")
    assert events == [Event("x", "delta", "42", 1500)] and decoder.saw_sse


def test_a_final_event_without_a_blank_line_is_dispatched() -> None:
    events, _ = decode(b"data: [DONE]")
    assert events == [Event("[DONE]")]


def test_no_data_no_event_and_a_body_that_is_not_sse() -> None:
    events, decoder = decode(b'{"id": "c1", "choices": []}')
    assert events == [] and not decoder.saw_sse


def test_utf8_split_across_chunks_and_a_bom() -> None:
    text = "data: é€\n\n".encode()
    events, _ = decode(b"\xef\xbb\xbf" + text[:7], text[7:])
    assert events == [Event("é€")]


def test_an_event_past_max_event_is_refused() -> None:
    with pytest.raises(EventTooLarge):
        decode(b"data: " + b"x" * 100 + b"\n", b"data: " + b"x" * 100 + b"\n", max_event=150)
    with pytest.raises(EventTooLarge):
        decode(b"data: " + b"x" * 1000, max_event=150)  # one line with no end yet
