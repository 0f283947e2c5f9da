"""The sandbox's own terminal: a client that goes away mid-request is not a traceback."""

from __future__ import annotations

import pytest

from pipeline.sandbox.server import _HTTPServer


def _report(exc: BaseException) -> None:
    server = object.__new__(_HTTPServer)  # handle_error reads no state of the server
    try:
        raise exc
    except BaseException:
        server.handle_error(None, ("127.0.0.1", 40000))


def test_a_client_that_resets_its_connection_prints_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _report(ConnectionResetError(104, "Connection reset by peer"))
    _report(BrokenPipeError(32, "Broken pipe"))
    assert capsys.readouterr().err == ""


def test_any_other_error_is_still_printed(capsys: pytest.CaptureFixture[str]) -> None:
    _report(ValueError("a bug in a handler"))
    err = capsys.readouterr().err
    assert "Traceback" in err and "a bug in a handler" in err
