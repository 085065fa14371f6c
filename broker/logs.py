"""Structured logging: structlog configured once; uvicorn and every stdlib logger go through it.

Contract:

- ``configure_logging(settings, stream=...)``: after it returns, every logger from ``get_logger``
  and every stdlib logger that propagates to the root (uvicorn's included) writes one rendered
  event per record to ``stream`` (``sys.stdout`` by default):

  - JSON lines, one object per line, when ``settings.format`` is ``json``, or ``auto`` and the
    stream is not a TTY. Keys: ``timestamp`` (ISO 8601, UTC, ``Z``), ``level``, ``logger``,
    ``pid`` (the process that wrote it: with ``--workers N`` several share the stream),
    ``event``, then the bound context variables and the event's fields. An exception becomes a
    structured ``exception`` list (``dict_tracebacks``) without local variables.
  - structlog's ``ConsoleRenderer`` when ``settings.format`` is ``console``, or ``auto`` on a TTY;
    tracebacks are plain, again without local variables.

  Events below ``settings.level`` are dropped, for stdlib loggers too. Calling it again replaces
  the previous configuration rather than adding to it (the app calls it once at start-up, tests
  call it once per test).
- Secrets are redacted before rendering (``redact_secrets``): the value of any key named like a
  token, password, secret, authorization, API key or cookie becomes ``"***"``, at any depth; in
  every string, the password of a URL with userinfo (``redis://:***@host``), the value of a secret
  query parameter (``?token=***``) and a bearer token are masked. The console renderer formats
  tracebacks itself, after this step, so on a TTY an exception message is shown as is.
- ``get_logger(name)`` may be called at import time, before ``configure_logging``: the logger
  it returns builds its structlog logger on first use and keeps it only while structlog's
  configuration stays the one it was built for (``configure_logging``, a host app's own
  ``structlog.configure``, ``structlog.reset_defaults``: the next call follows them), so each
  call logs through the configuration in force without building a logger per call.
  ``structlog.testing.capture_logs()`` sees it: it swaps the processors inside the list.

uvicorn: ``configure_logging`` removes any handler from the ``uvicorn``, ``uvicorn.error``,
``uvicorn.access`` and ``uvicorn.asgi`` loggers and lets them propagate to the root handler, whose
``structlog.stdlib.ProcessorFormatter`` renders them like our own events. The caller must create
``uvicorn.Config(..., log_config=None)``: uvicorn's default ``LOGGING_CONFIG`` would install its
own handlers again. Leave ``log_level`` unset (``None``, the default) so that the level from the
settings applies. uvicorn's access lines are always off (``uvicorn.access`` is disabled): the
broker logs one line per connection, in one process or with ``--workers N`` alike.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO, cast

import msgspec
import structlog
from structlog._config import _CONFIG as _STRUCTLOG_CONFIG
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from broker.settings import LogFormat, LogLevel, LogSettings

__all__ = [
    "SECRET_MASK",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact_secrets",
    "redact_text",
]

SECRET_MASK: Final = "***"

_LEVELS: Final[Mapping[LogLevel, int]] = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}

#: The loggers uvicorn writes to; uvicorn's own LOGGING_CONFIG gives them private handlers.
_UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

#: Name of the root handler we install, so that reconfiguring replaces it and nothing else
#: (pytest, for one, hangs its own capture handler on the root logger).
_HANDLER_NAME: Final = "broker.logs"

# A secret word at the end of the key or followed by a separator: ``token``, ``access_token``,
# ``accessToken``, ``client_secret``, ``x-api-key``, ``password_hash``. Not ``tokens`` or
# ``max_tokens`` (a token bucket's level is not a secret) and not ``key_prefix``.
_SECRET_KEY_RE: Final = re.compile(
    r"(?:token|passw(?:or)?d|passphrase|pwd|secrets?|authorization|api[_\-]?keys?|private[_\-]?key"
    r"|cookies?|credentials?)(?:$|[_\-.])",
    re.IGNORECASE,
)
# ``scheme://userinfo@``. The userinfo match is greedy up to the last ``@`` of the authority, so
# an unescaped ``@`` inside a password does not leak the rest of it.
_URL_USERINFO_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s]*)@")
_QUERY_PARAM_RE: Final = re.compile(r"([?&;]([^=&;#?\s]+)=)([^&;#\s]*)")
_BEARER_RE: Final = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/\-]+=*", re.IGNORECASE)


#: Setting names that hold secrets without saying so (the API keys of ``[api]``).
_SECRET_NAMES: Final = frozenset({"keys", "publish_keys"})


# Every rendered line asks about each of its keys, nearly always the same few dozen names: the
# answers are kept (bounded: keys of nested values can come from outside).
@functools.lru_cache(maxsize=1024)
def is_secret_key(name: str) -> bool:
    """Whether a field or parameter called ``name`` holds a secret whose value must not be shown."""
    return name.lower() in _SECRET_NAMES or _SECRET_KEY_RE.search(name) is not None


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    user, colon, _password = userinfo.partition(":")
    # Without a colon the userinfo is often a bare token (``https://<token>@host``): mask it all.
    return f"{scheme}{user}:{SECRET_MASK}@" if colon else f"{scheme}{SECRET_MASK}@"


def _mask_query_param(match: re.Match[str]) -> str:
    return f"{match.group(1)}{SECRET_MASK}" if is_secret_key(match.group(2)) else match.group(0)


def redact_text(text: str) -> str:
    """``text`` with URL passwords, secret query parameters and bearer tokens masked as ``***``."""
    # Most strings contain none of the markers: skip the regular expressions for them.
    if "://" in text:
        text = _URL_USERINFO_RE.sub(_mask_userinfo, text)
    if "=" in text:
        text = _QUERY_PARAM_RE.sub(_mask_query_param, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER_RE.sub(rf"\g<1>{SECRET_MASK}", text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: SECRET_MASK if isinstance(k, str) and is_secret_key(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret-named fields and secrets inside strings, at any depth."""
    for key, value in event_dict.items():
        # Assigning to existing keys while iterating is safe: the dict does not change size.
        event_dict[key] = SECRET_MASK if is_secret_key(key) else _redact_value(value)
    return event_dict


# One encoder for the process. ``enc_hook=str`` renders objects msgspec does not know (an
# exception, a path, a custom class) as their ``str()`` rather than losing the whole line.
_JSON_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


def _dumps(obj: Any, default: Any = None, **_kwargs: Any) -> str:
    """Serializer for ``JSONRenderer``; ignores the ``default=`` it passes (docs/stack-findings.md).

    ``enc_hook`` does the job ``default`` would do. The result is ``str`` because the stdlib
    handler writes text.
    """
    return _JSON_ENCODER.encode(obj).decode()


_LEADING_KEYS: Final = ("timestamp", "level", "logger", "pid", "event")


def _leading_keys_first(
    _logger: WrappedLogger, _method_name: str, event_dict: EventDict
) -> EventDict:
    """Put timestamp, level, logger and event first: JSON lines read (and grep) more easily."""
    ordered = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _add_pid(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """Which process wrote the line: with ``--workers N`` several write to one stream."""
    event_dict["pid"] = os.getpid()
    return event_dict


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _renderers(json_lines: bool, colors: bool) -> list[Processor]:
    if json_lines:
        return [
            # Locals stay out: tokens and payloads hide in them (STYLE.md, Logging).
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redact_secrets,
            _leading_keys_first,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ]
    return [
        redact_secrets,
        # plain_traceback rather than the default, which prefers rich and shows its locals.
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        ),
    ]


def configure_logging(settings: LogSettings, *, stream: TextIO | None = None) -> None:
    """Route structlog, the stdlib root logger and uvicorn's loggers to ``stream``, rendered once.

    After this returns, the previous configuration made by this function is gone (no duplicate
    lines), the root logger's level is ``settings.level`` and uvicorn's loggers have no handler of
    their own. See the module docstring for the format and for what to pass to uvicorn.
    """
    out: TextIO = sys.stdout if stream is None else stream
    level = _LEVELS[settings.level]
    tty = _isatty(out)
    json_lines = settings.format is LogFormat.JSON or (
        settings.format is LogFormat.AUTO and not tty
    )

    # Shared by structlog events and by records from stdlib loggers ("foreign" records).
    pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_pid,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderers(json_lines, colors=tty),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        # Not closed: the stream belongs to the caller.
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.setLevel(logging.NOTSET)  # inherit the root's level
        uvicorn_logger.propagate = True
    # No access lines, whatever uvicorn.Config said and whichever ran first (a --workers process
    # configures logging after its Config): the broker writes its own line per connection, and
    # a line per /readyz probe would drown everything else.
    logging.getLogger("uvicorn.access").disabled = True

    structlog.configure(
        processors=[
            *pre_chain,
            structlog.processors.StackInfoRenderer(),
            # Hands the event dict to the stdlib logger; the handler's formatter renders it.
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # Level filtering in the bound logger: a dropped debug event costs one no-op call.
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Not cached by structlog: loggers made at import time, before this runs, must follow
        # it (and any later configuration). get_logger's loggers cache for themselves.
        cache_logger_on_first_use=False,
    )


class _Logger:
    """``get_logger``'s logger: a structlog bound logger, rebuilt only when the configuration
    changed.

    structlog's lazy proxy (what ``structlog.get_logger`` returns) builds a new bound logger and
    looks the stdlib logger up on every call, even for an event its level drops; this one builds
    it once per configuration. The configuration in force is told by the identity of the four
    objects a bound logger is built from, which ``structlog.configure`` and
    ``structlog.reset_defaults`` replace (``capture_logs`` changes the processors inside their
    list, which the bound logger shares).
    """

    __slots__ = ("_bound", "_context_class", "_factory", "_name", "_processors", "_wrapper")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None
        self._wrapper: object = None
        self._processors: object = None
        self._factory: object = None
        self._context_class: object = None

    def _current(self) -> Any:
        config = _STRUCTLOG_CONFIG
        bound = self._bound
        if (
            bound is None
            or config.default_wrapper_class is not self._wrapper
            or config.default_processors is not self._processors
            or config.logger_factory is not self._factory
            or config.default_context_class is not self._context_class
        ):
            self._wrapper = config.default_wrapper_class
            self._processors = config.default_processors
            self._factory = config.logger_factory
            self._context_class = config.default_context_class
            bound = self._bound = structlog.get_logger(self._name).bind()
        return bound

    def __getattr__(self, method: str) -> Any:
        # Called only for what the class lacks: debug, info, bind, ... of the bound logger.
        return getattr(self._current(), method)

    def __repr__(self) -> str:
        return f"<broker logger {self._name!r}>"


def get_logger(name: str) -> FilteringBoundLogger:
    """A structlog logger named ``name`` (use the module's ``__name__``); safe at import time."""
    return cast(FilteringBoundLogger, _Logger(name))
