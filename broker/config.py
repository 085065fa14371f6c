"""Load ``Settings`` from a TOML file and ``BROKER_*`` environment variables, or say what is wrong.

Contract: ``load_settings(path, environ)`` returns a validated, frozen ``Settings`` or raises
``ConfigError``; it never returns settings with a value it could not check. Precedence, lowest
first: the defaults in ``broker/settings.py``, the TOML file at ``path`` (none when ``None``),
then the environment (``os.environ`` when ``environ`` is ``None``).

Environment overrides are named ``BROKER_<SECTION>__<KEY>``: ``__`` separates levels, and names
are case-insensitive and lowercased (``BROKER_QUEUE__MAX_MESSAGES``,
``BROKER_NAMESPACES__CHAT__PRESENCE``), so a namespace with capitals in its name can only be set
in the file. A value is read as a TOML value when it parses as one (``500``, ``1.5``, ``true``,
``["https://a.example"]``, or a ``{ inline = "table" }`` that replaces the whole table) and as a
plain string otherwise. Where the schema expects a string (or a string enum) the text is taken
as is, so ``BROKER_SERVER__HOST=1e3`` means the host ``"1e3"``. ``BROKER_CONFIG`` names the config
file for the CLI and is not an override; any other ``BROKER_*`` variable must name a setting.

Every mistake raises ``ConfigError`` with a one-line message:

    <source>: <key path> = <value>: <what was expected>

``<source>`` is the file path or ``$BROKER_...``, the environment variable that set the value;
``<key path>`` is dotted, with TOML quoting for keys that need it (``namespaces."a b".presence``)
and ``[i]`` for list items; ``<value>`` is the ``repr`` of the offending value, truncated to about
80 characters, with secrets masked (secret-named keys entirely, URL passwords as ``:***@``).
Examples::

    /etc/broker.toml: queue.max_messages = 0: expected `int` >= 1
    $BROKER_QUEUE__OVERFLOW: queue.overflow = 'drop': expected one of 'disconnect', 'drop_oldest'

A file that cannot be read or parsed has no key: ``/etc/broker.toml:3:9: invalid TOML: ...``.

Exceptions: ``ConfigError(Exception)``, the only one this module raises.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
import ssl
import tomllib
import typing
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any, Final

import msgspec

from broker.auth.startup import problems as security_problems
from broker.logs import SECRET_MASK, is_secret_key, redact_text
from broker.settings import BackplaneKind, Settings, sentinel_address

__all__ = ["CONFIG_PATH_ENV", "ConfigError", "load_settings", "redacted_settings", "validate"]

#: The environment variable the CLI reads the config file path from; never an override.
CONFIG_PATH_ENV: Final = "BROKER_CONFIG"
_ENV_PREFIX: Final = "BROKER_"
_ENV_SEPARATOR: Final = "__"
#: ``BROKER_*`` variables that are not overrides: the config file's path, and the directory
#: ``broker serve --workers N`` hands its workers for their metrics.
_NOT_SETTINGS: Final = frozenset({CONFIG_PATH_ENV, "BROKER_METRICS_DIR"})
_MAX_VALUE_CHARS: Final = 80
_DEFAULTS: Final = "defaults"

#: A key path inside the raw settings: table keys (str) and list indexes (int).
KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A setting is unreadable, unknown, mistyped or out of range. ``str()`` is one line."""


class _Missing(enum.Enum):
    MISSING = enum.auto()


_MISSING: Final = _Missing.MISSING


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the defaults, then the TOML file at ``path``, then ``BROKER_*`` variables.

    Raises ``ConfigError`` (see the module docstring for its message) for any mistake.
    """
    raw: dict[str, Any] = {}
    # Who set each part of ``raw``: the file for everything (``()``), or an environment variable
    # for the paths it set. An error is blamed on the source of the longest prefix of its path.
    origins: dict[KeyPath, str] = {}
    if path is not None:
        file = os.fspath(path)
        raw = _read_toml(file)
        origins[()] = file
    _apply_environment(raw, origins, os.environ if environ is None else environ)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        key_path, expected, bad_key = _locate(raw, Settings, str(exc))
        source = _origin(origins, key_path)
        if bad_key:
            raise ConfigError(
                f"{source}: {_dotted(key_path)}: invalid key {key_path[-1]!r}: {expected}"
            ) from None
        if source.startswith("$") and expected.startswith("expected `array`"):
            expected += """ (write a TOML array, e.g. '["a", "b"]')"""
        raise ConfigError(_message(source, key_path, _lookup(raw, key_path), expected)) from None
    if (problem := next(_problems(settings), None)) is not None:
        key_path, value, expected = problem
        shown = _MISSING if value is None else value  # None: a missing setting, nothing to show
        raise ConfigError(_message(_origin(origins, key_path), key_path, shown, expected))
    return settings


def validate(settings: Settings) -> None:
    """Raise ``ConfigError`` if ``settings`` breaks a rule msgspec's constraints cannot express.

    ``load_settings`` runs it; call it on settings built in code. The message's source is
    ``settings``.
    """
    if (problem := next(_problems(settings), None)) is not None:
        key_path, value, expected = problem
        shown = _MISSING if value is None else value
        raise ConfigError(_message("settings", key_path, shown, expected))


def redacted_settings(settings: Settings) -> Any:
    """``settings`` as plain data with every secret masked (``check-config``, logs)."""
    return {key: _redacted((key,), value) for key, value in msgspec.to_builtins(settings).items()}


# --- Reading the sources

_TOML_POSITION_RE: Final = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def _read_toml(source: str) -> dict[str, Any]:
    try:
        with open(source, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError has no position attributes: the position is in the text.
        text = str(exc)
        if match := _TOML_POSITION_RE.match(text):
            reason, line, column = match.groups()
            raise ConfigError(f"{source}:{line}:{column}: invalid TOML: {reason}") from None
        raise ConfigError(f"{source}: invalid TOML: {text}") from None


def _apply_environment(
    raw: dict[str, Any], origins: dict[KeyPath, str], environ: Mapping[str, str]
) -> None:
    set_by: dict[KeyPath, str] = {}
    # Sorted: deterministic, and a table (BROKER_NAMESPACES__CHAT) comes before its keys.
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(_ENV_PREFIX) or upper in _NOT_SETTINGS:
            continue
        text = environ[name]
        key_path = _env_key_path(name, text)
        if (other := set_by.get(key_path)) is not None:
            raise ConfigError(
                f"${name}: {_dotted(key_path)} = {_show(key_path, text)}: "
                f"already set by ${other}; set it once"
            )
        set_by[key_path] = name
        value = _parse_env_value(text, _type_at(Settings, key_path))
        _set(raw, origins, key_path, value, source=f"${name}")


def _env_key_path(name: str, text: str) -> tuple[str, ...]:
    """The key path ``name`` overrides; ``ConfigError`` unless it names a known setting or table."""
    parts = tuple(part.lower() for part in name[len(_ENV_PREFIX) :].split(_ENV_SEPARATOR))
    if any(not part for part in parts):
        raise ConfigError(
            f"${name}: {_show((), text)} is not a setting: expected BROKER_<SECTION>__<KEY>, "
            f"with one '{_ENV_SEPARATOR}' between levels"
        )
    if len(parts) == 1:
        section = _type_at(Settings, parts)
        keys = _known_keys(section)
        if keys is not None:
            expected = f"expected {name}__<KEY> with KEY one of {', '.join(keys)}"
        elif section is not None:
            expected = f"expected {name}__<NAME>__<KEY>"
        else:
            sections = ", ".join(_known_keys(Settings) or [])
            expected = f"expected BROKER_<SECTION>__<KEY> with SECTION one of {sections}"
        raise ConfigError(f"${name}: {parts[0]} = {_show(parts, text)}: {expected}")
    tp: Any = Settings
    for depth, part in enumerate(parts):
        if not _is_table(tp):
            raise ConfigError(
                f"${name}: {_dotted(parts)} = {_show(parts, text)}: "
                f"{_dotted(parts[:depth])} is a single value, not a table (set it whole)"
            )
        keys = _known_keys(tp)
        if keys is not None and part not in keys:
            raise ConfigError(
                f"${name}: {_dotted(parts)} = {_show(parts, text)}: "
                f"{_unknown_key(part, keys, name_it=depth < len(parts) - 1)}"
            )
        tp = _child_type(tp, part)
    return parts


def _parse_env_value(text: str, tp: Any) -> Any:
    try:
        document = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if len(document) != 1:  # e.g. "1\nother = 2": not a single value
        return text
    value = document["value"]
    if _expects_text(tp) and not isinstance(value, str):
        return text
    return value


def _set(
    raw: dict[str, Any],
    origins: dict[KeyPath, str],
    key_path: tuple[str, ...],
    value: Any,
    *,
    source: str,
) -> None:
    node = raw
    for depth, part in enumerate(key_path[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            # Created, or replacing a value that was not a table: from now on this is the
            # variable's doing.
            child = node[part] = {}
            origins[key_path[: depth + 1]] = source
        node = child
    node[key_path[-1]] = value
    for other in [p for p in origins if p[: len(key_path)] == key_path]:
        del origins[other]  # a table value replaces what was under it
    origins[key_path] = source


def _origin(origins: Mapping[KeyPath, str], key_path: KeyPath) -> str:
    for end in range(len(key_path), -1, -1):
        if (source := origins.get(key_path[:end])) is not None:
            return source
    return _DEFAULTS


# --- The schema


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated[...]`` constraints."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp


def _struct_fields(tp: Any) -> tuple[msgspec.structs.FieldInfo, ...] | None:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return msgspec.structs.fields(tp)
    return None


def _known_keys(tp: Any) -> list[str] | None:
    """The keys a table of type ``tp`` accepts, or ``None`` if it is not a Struct."""
    fields = _struct_fields(tp)
    return None if fields is None else [f.encode_name for f in fields]


def _child_type(tp: Any, part: str | int) -> Any | None:
    """The type at key or index ``part`` of a value of type ``tp``; ``None`` if there is none."""
    fields = _struct_fields(tp)
    if fields is not None:
        return next((f.type for f in fields if f.encode_name == part), None)
    base = _strip(tp)
    origin = typing.get_origin(base)
    if origin is dict:
        return typing.get_args(base)[1]
    if origin is list:
        return typing.get_args(base)[0]
    return None


def _type_at(tp: Any, key_path: KeyPath) -> Any | None:
    for part in key_path:
        tp = _child_type(tp, part)
        if tp is None:
            return None
    return tp


def _is_table(tp: Any) -> bool:
    return _struct_fields(tp) is not None or typing.get_origin(_strip(tp)) is dict


def _expects_text(tp: Any) -> bool:
    base = _strip(tp)
    if base is str:
        return True
    return (
        isinstance(base, type)
        and issubclass(base, enum.Enum)
        and all(isinstance(member.value, str) for member in base)
    )


# --- Explaining msgspec's ValidationError

# "Expected `int` >= 1 - at `$.queue.max_messages`", "... - at `key` in `$.namespaces`".
_ERROR_RE: Final = re.compile(
    r"^(?P<what>.*?)(?: - at (?P<key>`key` in )?`\$(?P<where>[^`]*)`)?$", re.DOTALL
)
_PATH_PART_RE: Final = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN_FIELD_RE: Final = re.compile(r"^Object contains unknown field `(.*)`$")
_BAD_ENUM_RE: Final = re.compile(r"^Invalid enum value ")


def _literal_choices(tp: Any) -> str | None:
    """``true, false, 'auto'`` for ``bool | Literal["auto"]``; None for other types."""
    choices: list[str] = []
    for arg in typing.get_args(tp) or (tp,):
        if arg is bool:
            choices += ["true", "false"]
        elif typing.get_origin(arg) is typing.Literal:
            choices += [repr(value) for value in typing.get_args(arg)]
    has_literal = any(typing.get_origin(arg) is typing.Literal for arg in typing.get_args(tp))
    return ", ".join(choices) if has_literal else None


def _locate(raw: Any, tp: Any, error: str) -> tuple[KeyPath, str, bool]:
    """Where in ``raw`` msgspec's ``error`` is, what was expected, and whether a key is at fault.

    msgspec writes ``[...]`` for the key of a dict entry and ``key in`` for the key itself,
    without naming it: convert the dict's entries one by one to find which.
    """
    match = _ERROR_RE.match(error)
    assert match is not None  # the pattern matches any text
    what, at_key, where = match.group("what"), match.group("key"), match.group("where") or ""
    parts: list[str | int | None] = []
    for part in _PATH_PART_RE.finditer(where):
        name, index = part.groups()
        parts.append(name if name is not None else None if index == "..." else int(index))
    if at_key is not None:
        parts.append(None)
    if None in parts:
        dict_path = typing.cast(KeyPath, tuple(parts[: parts.index(None)]))
        found = _locate_in_dict(_lookup(raw, dict_path), _type_at(tp, dict_path))
        if found is not None:
            sub_path, expected, bad_key = found
            return dict_path + sub_path, expected, bad_key
        parts = parts[: parts.index(None)]  # could not tell which entry: blame the dict
    key_path = typing.cast(KeyPath, tuple(parts))
    if unknown := _UNKNOWN_FIELD_RE.match(what):
        key = unknown.group(1)
        return (
            (*key_path, key),
            _unknown_key(key, _known_keys(_type_at(tp, key_path)) or []),
            False,
        )
    if _BAD_ENUM_RE.match(what):
        enum_type = _strip(_type_at(tp, key_path))
        if isinstance(enum_type, type) and issubclass(enum_type, enum.Enum):
            choices = ", ".join(repr(member.value) for member in enum_type)
            return key_path, f"expected one of {choices}", False
        if literals := _literal_choices(enum_type):
            return key_path, f"expected one of {literals}", False
    # msgspec speaks JSON; the file is TOML, where an object is a table.
    expected = what[:1].lower() + what[1:]
    return key_path, expected.replace("`object`", "`table`"), False


def _locate_in_dict(entries: Any, dict_type: Any) -> tuple[KeyPath, str, bool] | None:
    base = _strip(dict_type)
    if not isinstance(entries, dict) or typing.get_origin(base) is not dict:
        return None
    key_type, value_type = typing.get_args(base)
    for key, value in entries.items():
        try:
            msgspec.convert(key, key_type)
        except msgspec.ValidationError as exc:
            what = _ERROR_RE.match(str(exc))
            expected = what.group("what") if what is not None else str(exc)
            return (key,), expected[:1].lower() + expected[1:], True
        try:
            msgspec.convert(value, value_type)
        except msgspec.ValidationError as exc:
            sub_path, expected, bad_key = _locate(value, value_type, str(exc))
            return (key, *sub_path), expected, bad_key
    return None


def _unknown_key(key: str, known: list[str], *, name_it: bool = False) -> str:
    """What to say about ``key``; ``name_it`` when the key path shown goes on past it."""
    hint = difflib.get_close_matches(key, known, n=1)
    did_you_mean = f", did you mean {hint[0]!r}?" if hint else ""
    named = f" {key!r}" if name_it else ""
    return f"unknown key{named}{did_you_mean} (known keys: {', '.join(known)})"


# --- Cross-field rules

_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")


def _problems(settings: Settings) -> Iterator[tuple[KeyPath, Any, str]]:
    """(key path, value, expectation) for each rule ``settings`` breaks, in a stable order."""
    yield from _non_finite_floats(settings, ())

    for index, origin in enumerate(settings.server.allowed_origins):
        parsed = _urlsplit(origin)
        # An Origin header is scheme://host[:port] and nothing else (RFC 6454 §7): an entry with
        # a path, even just "/", a query or a fragment can never match one.
        if parsed is None or (parsed.scheme and (parsed.path or parsed.query or parsed.fragment)):
            yield (
                ("server", "allowed_origins", index),
                origin,
                "expected an origin, scheme://host[:port], without path, query or trailing '/'",
            )

    for index, proxy in enumerate(settings.server.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            yield (
                ("server", "trusted_proxies", index),
                proxy,
                "expected an IP address or a CIDR network such as 10.0.0.0/8",
            )
    yield from _tls_problems(settings)
    yield from security_problems(settings)

    backplane = settings.backplane
    if backplane.kind is BackplaneKind.REDIS:
        urls: list[tuple[KeyPath, str]] = (
            [(("backplane", "redis_urls", i), url) for i, url in enumerate(backplane.redis_urls)]
            if backplane.redis_urls
            else [(("backplane", "redis_url"), backplane.redis_url)]
        )
        for key_path, url in urls:
            # redis-py accepts only these schemes; say so now rather than at the first connection.
            parsed = _urlsplit(url)
            if parsed is None or parsed.scheme not in _REDIS_SCHEMES:
                yield (
                    key_path,
                    url,
                    "expected a redis://, rediss:// or unix:// URL (backplane.kind is 'redis')",
                )
        for index, address in enumerate(backplane.redis_sentinels):
            if sentinel_address(address) is None:
                yield (
                    ("backplane", "redis_sentinels", index),
                    address,
                    "expected a Sentinel's host:port, such as '10.0.0.5:26379'",
                )
        if backplane.redis_sentinels and backplane.redis_cluster:
            yield (
                ("backplane", "redis_cluster"),
                True,
                "expected false with redis_sentinels (a cluster fails over by itself)",
            )
        if backplane.redis_sentinels and backplane.redis_urls:
            yield (
                ("backplane", "redis_urls"),
                backplane.redis_urls,
                "expected [] with redis_sentinels (one master, found through the Sentinels)",
            )


def _tls_problems(settings: Settings) -> Iterator[tuple[KeyPath, Any, str]]:
    """The TLS files must exist and load, so that a mistake stops start-up with a clear line
    rather than a traceback from uvicorn."""
    server = settings.server
    if not server.tls_certfile:
        for key in ("tls_keyfile", "tls_keyfile_password", "tls_ca_certs"):
            if getattr(server, key):
                yield (
                    ("server", key),
                    getattr(server, key),
                    "expected server.tls_certfile to be set as well",
                )
        return
    for key in ("tls_certfile", "tls_keyfile", "tls_ca_certs"):
        path = getattr(server, key)
        if path and not os.path.isfile(path):
            yield ("server", key), path, "expected a readable file (not found)"
            return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(
            server.tls_certfile,
            server.tls_keyfile or None,
            server.tls_keyfile_password or None,
        )
    except (OSError, ssl.SSLError) as exc:
        yield (
            ("server", "tls_certfile"),
            server.tls_certfile,
            f"expected a PEM certificate chain that loads with server.tls_keyfile: {exc}",
        )
        return
    if server.tls_ca_certs:
        try:
            context.load_verify_locations(server.tls_ca_certs)
        except (OSError, ssl.SSLError) as exc:
            yield (
                ("server", "tls_ca_certs"),
                server.tls_ca_certs,
                f"expected PEM CA certificates: {exc}",
            )


def _urlsplit(url: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unclosed "[" around an IPv6 address
        return None


def _non_finite_floats(value: Any, key_path: KeyPath) -> Iterator[tuple[KeyPath, Any, str]]:
    # Every duration or rate has "0 means none/never" where that makes sense; inf would be a
    # second spelling of it, and JSON (retry_after is sent to clients) cannot encode it.
    if isinstance(value, float):
        if not math.isfinite(value):
            yield key_path, value, "expected a finite number"
    elif isinstance(value, msgspec.Struct):
        for field in msgspec.structs.fields(value):
            yield from _non_finite_floats(
                getattr(value, field.name), (*key_path, field.encode_name)
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite_floats(item, (*key_path, key))


# --- Formatting

_BARE_KEY_RE: Final = re.compile(r"^[A-Za-z0-9_\-]+$")


def _dotted(key_path: KeyPath) -> str:
    """``key_path`` as TOML would spell it: ``namespaces."a.b".presence``, ``x.items[2]``."""
    text = ""
    for part in key_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY_RE.match(part) else msgspec.json.encode(part).decode()
            text += f".{key}" if text else key
    return text


def _lookup(raw: Any, key_path: KeyPath) -> Any:
    for part in key_path:
        if isinstance(part, int) and isinstance(raw, list) and -len(raw) <= part < len(raw):
            raw = raw[part]
        elif isinstance(part, str) and isinstance(raw, dict) and part in raw:
            raw = raw[part]
        else:
            return _MISSING
    return raw


def _redacted(key_path: KeyPath, value: Any) -> Any:
    if any(isinstance(part, str) and is_secret_key(part) for part in key_path):
        return SECRET_MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redacted((), item) for item in value]
    if isinstance(value, dict):
        return {key: _redacted((key,), item) for key, item in value.items()}
    return value


def _show(key_path: KeyPath, value: Any) -> str:
    """``repr`` of ``value`` with secrets masked, cut to about 80 characters."""
    text = repr(_redacted(key_path, value))
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


def _message(source: str, key_path: KeyPath, value: Any, expected: str) -> str:
    shown = "" if value is _MISSING else f" = {_show(key_path, value)}"
    return f"{source}: {_dotted(key_path)}{shown}: {expected}"
