"""broker.logs: one rendering pipeline for our events and uvicorn's, with secrets redacted."""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from broker.logs import configure_logging, get_logger, is_secret_key, redact_text
from broker.settings import LogFormat, LogLevel, LogSettings

_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures logging; undo it afterwards so later tests see the logging they had."""
    root = logging.getLogger()
    root_handlers, root_level = set(root.handlers), root.level
    saved = [
        (logger, logger.handlers[:], logger.level, logger.propagate)
        for logger in map(logging.getLogger, _UVICORN_LOGGERS)
    ]
    yield
    # Only ours: pytest adds and removes its own capture handlers around each test phase.
    for handler in [h for h in root.handlers if h.get_name() == "broker.logs"]:
        if handler not in root_handlers:
            root.removeHandler(handler)
    root.setLevel(root_level)
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_logging(level: LogLevel = LogLevel.INFO) -> io.StringIO:
    stream = io.StringIO()
    configure_logging(LogSettings(level=level, format=LogFormat.JSON), stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Each line of ``stream`` parsed as one JSON object."""
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(isinstance(obj, dict) for obj in objects)
    return objects


# --- JSON lines


def test_json_format_writes_one_object_per_line_with_time_level_logger_and_event() -> None:
    stream = json_logging()
    log = get_logger("broker.test")
    log.info("connection.closed", code=4008, reason="slow_consumer")
    log.warning("hub.busy", depth=12)

    first, second = lines(stream)
    assert list(first)[:5] == ["timestamp", "level", "logger", "pid", "event"]
    assert first["pid"] == os.getpid()  # with --workers N, which process wrote it
    assert first["level"] == "info"
    assert first["logger"] == "broker.test"
    assert first["event"] == "connection.closed"
    assert (first["code"], first["reason"]) == (4008, "slow_consumer")
    assert second["level"] == "warning"
    assert second["event"] == "hub.busy"


def test_timestamps_are_iso_8601_in_utc() -> None:
    stream = json_logging()
    get_logger("broker.test").info("tick")
    (line,) = lines(stream)
    assert line["timestamp"].endswith("Z")
    parsed = datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert parsed.utcoffset() == datetime.timedelta(0)


def test_auto_format_writes_json_when_the_stream_is_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.AUTO), stream=stream)
    get_logger("broker.test").info("started", port=8000)
    (line,) = lines(stream)
    assert line["port"] == 8000


def test_bound_context_variables_appear_on_every_line() -> None:
    stream = json_logging()
    structlog.contextvars.bind_contextvars(client="c-1", remote="10.0.0.1:5000")
    get_logger("broker.test").info("connection.opened")
    (line,) = lines(stream)
    assert (line["client"], line["remote"]) == ("c-1", "10.0.0.1:5000")


def test_objects_json_cannot_encode_are_written_as_their_str() -> None:
    class Peer:
        def __str__(self) -> str:
            return "peer#7"

    stream = json_logging()
    get_logger("broker.test").info("odd", peer=Peer(), path=datetime.date(2024, 1, 2))
    (line,) = lines(stream)
    assert line["peer"] == "peer#7"
    assert line["path"] == "2024-01-02"


def test_events_below_the_configured_level_are_dropped() -> None:
    stream = json_logging(LogLevel.WARNING)
    log = get_logger("broker.test")
    log.info("quiet")
    logging.getLogger("uvicorn.access").info("GET / 200")
    log.warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_a_logger_made_before_configuration_follows_it() -> None:
    early = get_logger("broker.early")  # as modules do at import time
    stream = json_logging()
    early.info("late.event")
    assert [line["event"] for line in lines(stream)] == ["late.event"]


def test_a_logger_that_has_logged_follows_every_later_configuration() -> None:
    log = get_logger("broker.used")  # used once, then configured again and again
    log.info("under.defaults")
    quiet = json_logging(LogLevel.WARNING)
    log.info("dropped")
    log.warning("kept")
    verbose = json_logging(LogLevel.DEBUG)
    log.debug("shown")
    with structlog.testing.capture_logs() as captured:
        log.info("captured")
    structlog.reset_defaults()
    log.info("back.to.defaults")
    assert [line["event"] for line in lines(quiet)] == ["kept"]
    assert [line["event"] for line in lines(verbose)] == ["shown"]
    assert [entry["event"] for entry in captured] == ["captured"]


def test_configuring_again_replaces_the_previous_configuration() -> None:
    first = json_logging()
    second = json_logging()
    get_logger("broker.test").info("once")
    assert first.getvalue() == ""
    assert len(lines(second)) == 1


# --- Exceptions


def test_logged_exception_is_a_dict_traceback_without_local_variables() -> None:
    stream = json_logging()

    def fail() -> None:
        token = "LOCAL-SECRET"  # would show up if locals were rendered
        raise ValueError(f"bad frame from {len(token)}")

    try:
        fail()
    except ValueError:
        get_logger("broker.test").exception("hub.command_failed", command="Publish")

    output = stream.getvalue()
    assert "LOCAL-SECRET" not in output
    (line,) = lines(stream)
    assert line["level"] == "error"
    (exception,) = line["exception"]
    assert exception["exc_type"] == "ValueError"
    assert exception["exc_value"] == "bad frame from 12"
    assert [frame["name"] for frame in exception["frames"]] == [
        "test_logged_exception_is_a_dict_traceback_without_local_variables",
        "fail",
    ]
    assert all("locals" not in frame for frame in exception["frames"])


def test_exception_text_is_redacted() -> None:
    stream = json_logging()
    try:
        raise ConnectionError("cannot reach redis://:hunter2@cache:6379")
    except ConnectionError:
        get_logger("broker.test").exception("backplane.failed")
    assert "hunter2" not in stream.getvalue()
    (line,) = lines(stream)
    assert line["exception"][0]["exc_value"] == "cannot reach redis://:***@cache:6379"


# --- uvicorn and other stdlib loggers


def test_uvicorn_logs_come_out_as_json_lines_too_but_access_lines_never() -> None:
    # Access lines stay off even when uvicorn's Config ran first and set them up (as in each
    # process of --workers N): one /readyz probe a second must not write a line a second.
    logging.getLogger("uvicorn.access").propagate = False
    stream = json_logging()
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "1.2.3.4:5", "GET", "/readyz", "1.1", 200
    )
    (error,) = lines(stream)
    assert error["logger"] == "uvicorn.error"
    assert error["level"] == "info"
    assert error["event"] == "Started server process [42]"
    assert error["timestamp"].endswith("Z")


def test_handlers_uvicorn_installed_are_removed() -> None:
    # What uvicorn's default LOGGING_CONFIG leaves behind: a private handler, no propagation.
    uvicorn_logger = logging.getLogger("uvicorn.error")
    private = io.StringIO()
    uvicorn_logger.addHandler(logging.StreamHandler(private))
    uvicorn_logger.propagate = False

    stream = json_logging()
    uvicorn_logger.warning("Invalid HTTP request received.")

    assert private.getvalue() == ""
    assert [line["event"] for line in lines(stream)] == ["Invalid HTTP request received."]


def test_exception_from_a_stdlib_logger_is_a_dict_traceback() -> None:
    stream = json_logging()
    try:
        raise RuntimeError("ASGI app crashed")
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    (line,) = lines(stream)
    assert line["exception"][0]["exc_type"] == "RuntimeError"


def test_secret_query_parameters_in_uvicorn_messages_are_masked() -> None:
    stream = json_logging()
    logging.getLogger("uvicorn.error").info(
        '%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/v1/ws?token=abc123&room=1"
    )
    (line,) = lines(stream)
    assert line["event"] == '1.2.3.4:5 - "WebSocket /v1/ws?token=***&room=1" [accepted]'


# --- Redaction


def test_secret_fields_are_redacted_at_any_depth() -> None:
    stream = json_logging()
    get_logger("broker.test").info(
        "auth.checked",
        token="abc123",
        user="ada",
        headers={"Authorization": "Bearer xyz", "Accept": "*/*"},
        clients=[{"api_key": "k-1", "name": "svc"}],
    )
    assert "abc123" not in stream.getvalue()
    (line,) = lines(stream)
    assert line["token"] == "***"
    assert line["user"] == "ada"
    assert line["headers"] == {"Authorization": "***", "Accept": "*/*"}
    assert line["clients"] == [{"api_key": "***", "name": "svc"}]


def test_url_passwords_are_masked_in_every_string() -> None:
    stream = json_logging()
    get_logger("broker.test").info(
        "backplane.connecting", url="redis://:hunter2@cache:6379/0", note="via rediss://u:p@w@h"
    )
    (line,) = lines(stream)
    assert line["url"] == "redis://:***@cache:6379/0"
    assert line["note"] == "via rediss://u:***@h"


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "access_token",
        "accessToken",
        "password",
        "db_password",
        "client_secret",
        "Authorization",
        "x-api-key",
        "apikey",
        "cookie",
        "credentials",
    ],
)
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize(
    "name", ["tokens", "max_tokens", "key_prefix", "user", "channel", "event", "timestamp"]
)
def test_ordinary_key_names(name: str) -> None:
    assert not is_secret_key(name)


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("redis://:pw@host:6379", "redis://:***@host:6379"),
        ("redis://user:pw@host", "redis://user:***@host"),
        ("https://ghp_token@github.com/x", "https://***@github.com/x"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("/ws?room=1&access_token=t", "/ws?room=1&access_token=***"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("a=b and plain text", "a=b and plain text"),
    ],
)
def test_redact_text(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted


# --- Console output


def test_console_format_is_human_readable_and_redacted() -> None:
    stream = io.StringIO()
    configure_logging(LogSettings(format=LogFormat.CONSOLE), stream=stream)
    get_logger("broker.test").info("connection.opened", remote="10.0.0.1", password="pw")
    output = stream.getvalue()
    assert not output.startswith("{")
    assert "connection.opened" in output
    assert "remote=10.0.0.1" in output
    assert "password=***" in output
    assert "\x1b[" not in output, "no colours when the stream is not a terminal"


def test_auto_format_is_the_console_renderer_on_a_tty() -> None:
    controller, terminal = os.openpty()
    try:
        with os.fdopen(terminal, "w", closefd=False) as tty:
            configure_logging(LogSettings(format=LogFormat.AUTO), stream=tty)
            get_logger("broker.test").info("on.a.terminal")
            tty.flush()
        output = os.read(controller, 65536).decode()
    finally:
        os.close(controller)
        os.close(terminal)
    assert "on.a.terminal" in output
    assert not output.lstrip().startswith("{")
