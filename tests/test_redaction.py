"""Redaction of secrets the way providers echo them back, URL passwords, and printable run.log lines.

A provider's error body may quote a key percent-encoded (it travelled in a query string),
JSON-escaped, or cut short; a proxy URL may carry a password in its userinfo. None of these may
reach a log, a message or the state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from loopback import Answer, Loopback, http_client

from pipeline.errors import AuthError
from pipeline.jobs import InputRef, Job, JobSettings
from pipeline.providers.base import Credentials, InputURLs, ProviderConfig
from pipeline.providers.kie import KieProvider
from pipeline.run.log import close_run_log, open_run_log
from pipeline.settings import MIN_PREFIX, Settings, public_url, redact, url_secrets

# Characters that every encoding changes: "+", "/", "=", "&", a space, a quote, a backslash.
KEY = 'sk+live/0123=abc&xyz 9"\\q'


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        quote(KEY, safe=""),
        quote(KEY),
        quote_plus(KEY),
        quote(KEY, safe="").lower(),
        json.dumps(KEY)[1:-1],
        json.dumps(KEY)[1:-1].replace("/", "\\/"),
    ],
    ids=["plain", "quote-nosafe", "quote", "quote_plus", "lowercase-hex", "json", "json-slash"],
)
def test_an_echoed_key_is_caught_in_every_encoding(echo: str) -> None:
    out = redact(f"provider said: key {echo} is invalid", [KEY])
    assert out == "provider said: key *** is invalid"


def test_every_prefix_of_eight_or_more_characters_is_caught() -> None:
    for n in range(MIN_PREFIX, len(KEY) + 1):
        assert redact(f"<{KEY[:n]}>", [KEY]) == "<***>", n
    # Seven characters are too few to tell a key from ordinary text.
    assert redact(f"<{KEY[: MIN_PREFIX - 1]}>", [KEY]) == f"<{KEY[: MIN_PREFIX - 1]}>"
    encoded = quote_plus(KEY)
    assert redact(f"<{encoded[:11]}...>", [KEY]) == "<***...>"


def test_short_secrets_are_caught_whole_and_tiny_ones_are_ignored() -> None:
    assert redact("pw=hunter2 and hunter", ["hunter2"]) == "pw=*** and hunter"
    assert redact("a b c abc", ["abc"]) == "a b c abc"  # 3 characters: not redactable safely


def test_the_longest_echo_wins_when_secrets_share_a_beginning() -> None:
    one, two = "shared-prefix-AAAA", "shared-prefix-BBBBBBBB"
    assert redact(f"x {two} y {one} z", [one, two]) == "x *** y *** z"
    assert redact(f"x {two}", [two, one]) == "x ***"  # no tail of the longer one is left


def test_text_without_secrets_is_unchanged() -> None:
    line = "job a: poll https://api.kie.ai/api/v1/jobs/recordInfo?taskId=t1 running 42%"
    assert redact(line, [KEY, "kie-SECRET-abc123456789"]) == line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "via https://bob:s3cret@proxy.example:8080/v1",
            "via https://bob:***@proxy.example:8080/v1",
        ),
        ("http://u:p%40ss:w@host/x?y=1", "http://u:***@host/x?y=1"),
        ("proxy=socks5://:token@127.0.0.1:1080 next", "proxy=socks5://:***@127.0.0.1:1080 next"),
        ("mail bob@example.com https://host/a@b", "mail bob@example.com https://host/a@b"),
        ("https://user@host/x", "https://user@host/x"),  # no password: nothing to hide
    ],
)
def test_a_password_in_url_userinfo_is_removed_anywhere_in_text(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_public_url_drops_the_userinfo() -> None:
    assert (
        public_url("https://bob:pw@proxy.example:8443/kie?x=1")
        == "https://proxy.example:8443/kie?x=1"
    )
    assert public_url("http://u:p@[::1]:9000") == "http://[::1]:9000"
    assert public_url("https://api.kie.ai") == "https://api.kie.ai"
    assert public_url("https://u:p@[::1/x") == "https://[::1/x"  # malformed, still no raise
    assert public_url("no scheme u:p@host") == "no scheme u:p@host"


def test_url_secrets_gives_the_password_as_written_and_decoded() -> None:
    found = url_secrets("https://bob:p%40ss-word@proxy", None, "https://api.kie.ai", "")
    assert found == ["p%40ss-word", "p@ss-word"]
    assert url_secrets("https://a:x@y@h/p", "https://a:x@y@h") == ["x@y"]  # deduplicated
    text = "proxy said: password p@ss-word refused (sent p%40ss-word)"
    assert "ss-word" not in redact(text, found)


def test_settings_user_cache_follows_xdg_then_home() -> None:
    assert Settings.from_env({"XDG_CACHE_HOME": "/x/c", "HOME": "/h"}).user_cache == Path(
        "/x/c/motion-pipeline"
    )
    # A relative XDG_CACHE_HOME is invalid by the spec and ignored.
    assert Settings.from_env({"XDG_CACHE_HOME": "rel", "HOME": "/h"}).user_cache == Path(
        "/h/.cache/motion-pipeline"
    )
    assert Settings.from_env({}).user_cache is None


def test_a_provider_error_echoing_the_key_encoded_and_cut_is_redacted() -> None:
    """The real Kie client over a real socket: a 401 body quotes the key three ways."""
    key = "kie/live+key=0123456789abcdef"
    body = {"code": 401, "msg": f"bad key {quote(key, safe='')} ({json.dumps(key)}) {key[:12]}..."}
    urls = InputURLs("https://cdn.example/a.png", "https://cdn.example/b.mp4")
    job = Job(
        id="j1",
        image=InputRef(urls.image_url, url=urls.image_url),
        video=InputRef(urls.video_url, url=urls.video_url),
        settings=JobSettings(),
        provider="kie",
        model=KieProvider.default_model,
    )

    async def submit(base_url: str) -> None:
        async with http_client(timeout=10) as client:
            cfg = ProviderConfig("kie", KieProvider.default_model, base_url)
            provider = KieProvider(cfg, Credentials({"api_key": key}), client)
            await provider.submit(job, urls, client_id="c1")

    with Loopback() as srv:
        srv.push(Answer(200, body))
        with pytest.raises(AuthError) as info:
            asyncio.run(submit(srv.base_url))
    text = f"{info.value} {info.value.args!r}"
    assert "0123456789" not in text and "live" not in text, text
    assert "***" in text


# --------------------------------------------------------------------------- run.log


def test_run_log_escapes_terminal_controls_in_messages_exceptions_and_stacks(
    tmp_path: Path,
) -> None:
    log = open_run_log(tmp_path, [])
    try:
        log.info("failure: %s", "\x1b[2Jcleared\nFORGED INFO done \u202ereversed")
        try:
            raise RuntimeError("boom \x1b]0;title\x07")
        except RuntimeError:
            log.exception("request failed \x9b")
        log.info("with stack", stack_info=True, extra={})
    finally:
        close_run_log(log)
    text = (tmp_path / "run.log").read_text(encoding="utf-8")
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in text
    assert "\\x1b[2Jcleared\\x0aFORGED INFO done \\u202ereversed" in text
    assert "RuntimeError: boom \\x1b]0;title\\x07" in text
    # Only our own line breaks remain: each record's first line starts with a timestamp, and the
    # provider's newline did not start a line of its own.
    assert not any(line.startswith("FORGED") for line in text.splitlines())
    assert "Stack (most recent call last)" in text


def test_run_log_filter_is_idempotent(tmp_path: Path) -> None:
    log = open_run_log(tmp_path, ["sk-0123456789"])
    extra = logging.StreamHandler(stream=open(tmp_path / "other.log", "w", encoding="utf-8"))  # noqa: SIM115
    log.addHandler(extra)  # sees the record after the logger's filter already rewrote it
    try:
        log.info("key sk-0123456789 and \x1b[1m")
    finally:
        log.removeHandler(extra)
        extra.close()
        close_run_log(log)
    for name in ("run.log", "other.log"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "key *** and \\x1b[1m" in text and "\\\\x1b" not in text


def test_an_older_token_sharing_the_secret_jwt_header_is_removed_whole() -> None:
    # Kling tokens are re-minted; every one starts with the same header. The current token is a
    # secret; an older one in the text must not lose only its beginning to the secret matcher.
    header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    current = f"{header}.eyJpc3MiOiJhayIsImV4cCI6MTB9.c2lnbmF0dXJlLW5ldw"
    older = f"{header}.eyJpc3MiOiJhayIsImV4cCI6MDl9.c2lnbmF0dXJlLW9sZA"
    out = redact(f"old {older} new {current}", [current])
    assert out == "old *** new ***"


def test_a_secret_inside_a_bearer_header_is_removed_whole() -> None:
    # The bearer pattern stops at "&"; the secret matcher covers the rest of the key.
    key = "tok12345&tail-of-the-key"
    assert redact(f"Authorization: Bearer {key} sent", [key]) == "Authorization: Bearer *** sent"
