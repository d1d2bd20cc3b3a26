"""Secrets and untrusted server text (moa_cli/redact.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moa_cli import redact as r


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    r.forget_secrets()
    yield
    r.forget_secrets()


def test_a_registered_key_is_masked_everywhere_in_a_text() -> None:
    r.register_secret("sk-abc123456789")
    assert r.redact("key sk-abc123456789 and again sk-abc123456789.") == "key **** and again ****."


def test_the_longest_secret_wins() -> None:
    r.register_secret("abcdefgh")
    r.register_secret("abcdefgh-longer-key")
    assert r.redact("x abcdefgh-longer-key y abcdefgh") == "x **** y ****"


@pytest.mark.parametrize("value", [None, "", "none", "short", "   padded   "[:6]])
def test_short_values_are_not_secrets(value: str | None) -> None:
    r.register_secret(value)
    assert r.redact("none short padded") == "none short padded"


def test_surrounding_whitespace_is_not_part_of_the_secret() -> None:
    r.register_secret("  sk-with-spaces-123  \n")
    assert r.redact("got sk-with-spaces-123") == "got ****"


def test_forget_secrets() -> None:
    r.register_secret("sk-abc123456789")
    r.forget_secrets()
    assert r.redact("sk-abc123456789") == "sk-abc123456789"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://user:secret@host:8000/v1", "http://****@host:8000/v1"),
        ("https://token@example.com", "https://****@example.com"),
        ("see http://a:b@h/x and ftp://c:d@e", "see http://****@h/x and ftp://****@e"),
        ("http://host/v1", "http://host/v1"),
        ("write to me@example.com", "write to me@example.com"),
    ],
)
def test_url_credentials_are_masked(url: str, masked: str) -> None:
    assert r.mask_url(url) == masked
    assert r.redact(url) == masked


def test_redact_leaves_ordinary_text_and_empty_strings_alone() -> None:
    assert r.redact("") == ""
    assert r.redact("plain text") == "plain text"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("bad \x1b[31mred\x1b[0m key", "bad red key"),
        ("title \x1b]0;pwned\x07here", "title here"),
        ("osc \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "osc link"),
        ("c1 \x9b2Jcsi", "c1 csi"),
        ("bell\x07 and nul\x00 and cr\rhere", "bell and nul and cr here"),
        ("bidi \u202eevil\u202c zero\u200bwidth", "bidi evil zerowidth"),
        ("many\n\n  lines\tand   spaces", "many lines and spaces"),
    ],
)
def test_server_text_loses_escapes_and_controls(raw: str, clean: str) -> None:
    assert r.clean_server_text(raw) == clean


def test_an_html_page_becomes_its_title() -> None:
    page = (
        "<!DOCTYPE html><html><head><title>502 Bad &amp; Gateway</title></head><body>" + "x" * 5000 + "</body></html>"
    )
    assert r.clean_server_text(page) == "HTML page: 502 Bad & Gateway"


@pytest.mark.parametrize("page", ["<html><body><h1>oops</h1></body></html>", "  <h1>Error</h1><p>nope</p>"])
def test_an_html_page_without_a_title(page: str) -> None:
    assert r.clean_server_text(page) == "an HTML page (no title)"


def test_text_mentioning_tags_is_not_taken_for_html() -> None:
    assert r.clean_server_text("expected <b> not found") == "expected <b> not found"


def test_server_text_is_cut_to_its_limit() -> None:
    assert r.clean_server_text("a" * 300) == "a" * 200 + "…"
    assert r.clean_server_text("abcdef", limit=3) == "abc…"


def test_server_text_never_carries_a_key_even_when_cut() -> None:
    r.register_secret("sk-0123456789abcdef")
    text = r.clean_server_text("x" * 190 + " sk-0123456789abcdef")
    assert "sk-0123" not in text and "****" in text
    assert "sk-" not in r.clean_server_text("<html><title>bad key sk-0123456789abcdef</title></html>")


def test_url_userinfo_and_its_basic_form_are_secrets() -> None:
    import base64

    r.register_url_secrets("http://alice:pa%24%24word-1234@host/v1")
    basic = base64.b64encode(b"alice:pa$$word-1234").decode()
    assert r.redact(f"got Basic {basic} and pa$$word-1234") == "got Basic **** and ****"


def test_every_string_in_a_stored_value_is_masked() -> None:
    r.register_secret("sk-abc123456789")
    value = {"system": "key sk-abc123456789", "list": ["sk-abc123456789", 3], "n": 1.5}
    assert r.redact_value(value) == {"system": "key ****", "list": ["****", 3], "n": 1.5}
