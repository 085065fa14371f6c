"""broker.config: defaults < TOML file < BROKER_* variables, and one clear line per mistake."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from broker.config import ConfigError, load_settings, validate
from broker.settings import (
    BackplaneKind,
    NamespaceSettings,
    OverflowPolicy,
    ServerSettings,
    Settings,
)

SHIPPED_CONFIG = Path(__file__).parents[2] / "config" / "broker.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None = None, environ: dict[str, str] | None = None) -> str:
    """The message of the ConfigError that loading raises; fails if nothing is raised."""
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


# --- Where settings come from


def test_no_file_and_no_environment_gives_the_defaults() -> None:
    assert load_settings(None, {}) == Settings()


def test_file_values_replace_defaults_and_leave_the_rest(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
        [queue]
        max_messages = 10
        overflow = "drop_oldest"
        [namespaces.chat]
        history_size = 50
        """,
    )
    settings = load_settings(path, {})
    assert settings.queue.max_messages == 10
    assert settings.queue.overflow is OverflowPolicy.DROP_OLDEST
    assert settings.queue.max_bytes == Settings().queue.max_bytes
    assert settings.namespace("chat") == NamespaceSettings(history_size=50)
    assert settings.namespace("other") == settings.default_namespace


def test_path_may_be_a_str_or_a_pathlike(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[hub]\nmailbox_size = 8\n")
    assert load_settings(str(path), {}) == load_settings(path, {})


def test_environment_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[queue]\nmax_messages = 10\nmax_bytes = 2048\n")
    settings = load_settings(path, {"BROKER_QUEUE__MAX_MESSAGES": "500"})
    assert settings.queue.max_messages == 500
    assert settings.queue.max_bytes == 2048


def test_environment_values_are_read_as_toml_values() -> None:
    settings = load_settings(
        None,
        {
            "BROKER_QUEUE__MAX_MESSAGES": "500",
            "BROKER_WEBSOCKET__PER_MESSAGE_DEFLATE": "true",
            "BROKER_WEBSOCKET__HEARTBEAT": "1.5",
            "BROKER_SERVER__ALLOWED_ORIGINS": '["https://a.example"]',
            "BROKER_QUEUE__OVERFLOW": "drop_oldest",  # not TOML: a plain string
        },
    )
    assert settings.queue.max_messages == 500
    assert settings.websocket.per_message_deflate is True
    assert settings.websocket.heartbeat == 1.5
    assert settings.server.allowed_origins == ["https://a.example"]
    assert settings.queue.overflow is OverflowPolicy.DROP_OLDEST


def test_environment_text_for_a_string_setting_is_kept_as_is() -> None:
    settings = load_settings(
        None,
        {
            "BROKER_SERVER__HOST": "1e3",  # a TOML float, but host is a string
            # Not a loopback host: anonymous clients need the explicit opt-in.
            "BROKER_AUTH__INSECURE_ALLOW_ANONYMOUS": "true",
            "BROKER_BACKPLANE__KEY_PREFIX": '"quoted"',  # a TOML string: its content
            "BROKER_BACKPLANE__REDIS_URL": "redis://cache:6379/1",
        },
    )
    assert settings.server.host == "1e3"
    assert settings.backplane.key_prefix == "quoted"
    assert settings.backplane.redis_url == "redis://cache:6379/1"


def test_environment_names_are_case_insensitive_and_reach_namespaces() -> None:
    settings = load_settings(
        None,
        {
            "broker_namespaces__chat__history_size": "100",
            "BROKER_NAMESPACES__CHAT__PRESENCE": "true",
            "BROKER_DEFAULT_NAMESPACE__JOIN_LEAVE": "true",
        },
    )
    assert settings.namespaces == {"chat": NamespaceSettings(history_size=100, presence=True)}
    assert settings.default_namespace.join_leave is True


def test_an_inline_table_in_the_environment_replaces_the_whole_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[namespaces.chat]\nhistory_size = 100\n")
    settings = load_settings(path, {"BROKER_NAMESPACES__CHAT": "{ presence = true }"})
    assert settings.namespaces == {"chat": NamespaceSettings(presence=True)}


def test_broker_config_and_unrelated_variables_are_not_overrides() -> None:
    environ = {"BROKER_CONFIG": "/etc/broker.toml", "PATH": "/usr/bin", "HOME": "/root"}
    assert load_settings(None, environ) == Settings()


# --- The shipped config/broker.toml


def test_shipped_config_file_loads_to_exactly_the_defaults() -> None:
    assert load_settings(SHIPPED_CONFIG, {}) == Settings()


def _section_fields() -> dict[str, list[str]]:
    """Every Struct section of Settings and its keys."""
    sections = {}
    for field in msgspec.structs.fields(Settings):
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            sections[field.encode_name] = [
                f.encode_name for f in msgspec.structs.fields(field.type)
            ]
    return sections


def test_shipped_config_file_lists_every_setting_of_every_section() -> None:
    document = tomllib.loads(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    sections = _section_fields()
    assert sections, "Settings has sections"
    for section, keys in sections.items():
        assert sorted(document.get(section, {})) == sorted(keys), f"[{section}] in {SHIPPED_CONFIG}"
    # And nothing else: the only section not written out is the namespaces example.
    assert set(document) == set(sections)


def test_shipped_config_file_has_a_valid_commented_out_namespace_example() -> None:
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    example = re.search(r"^# (\[namespaces\.chat\]\n(?:# \w+ = .*\n)+)", text, re.MULTILINE)
    assert example is not None, "the file shows a commented-out [namespaces.chat] section"
    uncommented = example.group(1).replace("# ", "")
    namespace = msgspec.convert(tomllib.loads(uncommented), Settings).namespaces["chat"]
    written = set(tomllib.loads(uncommented)["namespaces"]["chat"])
    assert written == {f.encode_name for f in msgspec.structs.fields(NamespaceSettings)}
    assert namespace != NamespaceSettings(), "the example changes something"


# --- Mistakes in the file


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert config_error(path) == f"{path}: cannot read the config file: No such file or directory"


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    assert config_error(tmp_path) == f"{tmp_path}: cannot read the config file: Is a directory"


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[server]\nport = = 8000\n")
    assert config_error(path) == f"{path}:2:8: invalid TOML: Invalid value"


def test_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_bytes(b'[server]\nhost = "\xff"\n')
    assert config_error(path) == f"{path}: not UTF-8 text (byte 17)"


def test_unknown_key_lists_the_known_keys_of_its_section(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[queue]\nmax_mesages = 5\n")
    assert config_error(path) == (
        f"{path}: queue.max_mesages = 5: unknown key, did you mean 'max_messages'? "
        "(known keys: max_messages, max_bytes, overflow, max_batch, max_batch_bytes, "
        "flush_interval)"
    )


def test_unknown_section_lists_the_sections(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[queues]\nmax_messages = 5\n")
    message = config_error(path)
    assert message.startswith(f"{path}: queues = {{'max_messages': 5}}: unknown key")
    assert "did you mean 'queue'?" in message
    assert "(known keys: server, websocket, queue, hub, limits, default_namespace," in message


def test_unknown_key_inside_a_namespace_names_the_namespace(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[namespaces.chat]\nhistroy_size = 5\n")
    message = config_error(path)
    assert message.startswith(f"{path}: namespaces.chat.histroy_size = 5: unknown key")
    assert (
        "(known keys: history_size, history_ttl, presence, join_leave, allow_publish, subscribe, "
        "publish, history_for_subscribers, presence_for_subscribers, anonymous)"
    ) in message


def test_wrong_type_names_key_value_and_expected_type(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[queue]\nmax_messages = "many"\n')
    assert config_error(path) == (f"{path}: queue.max_messages = 'many': expected `int`, got `str`")


def test_value_out_of_range_names_the_bound(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[queue]\nmax_messages = 0\n")
    assert config_error(path) == f"{path}: queue.max_messages = 0: expected `int` >= 1"


def test_bad_enum_value_lists_the_choices(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[queue]\noverflow = "drop"\n')
    assert config_error(path) == (
        f"{path}: queue.overflow = 'drop': expected one of 'disconnect', 'drop_oldest'"
    )


def test_value_where_a_table_belongs_says_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "server = 5\n")
    assert config_error(path) == f"{path}: server = 5: expected `table`, got `int`"


def test_error_inside_a_list_gives_the_index(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nallowed_origins = ["https://a.example", 3]\n')
    assert config_error(path) == f"{path}: server.allowed_origins[1] = 3: expected `str`, got `int`"


def test_error_inside_a_namespace_names_the_namespace(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, "[namespaces.news]\nhistory_size = 1\n[namespaces.chat]\nhistory_size = -1\n"
    )
    assert config_error(path) == f"{path}: namespaces.chat.history_size = -1: expected `int` >= 0"


def test_invalid_namespace_name_is_quoted_like_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[namespaces."bad name!"]\npresence = true\n')
    message = config_error(path)
    assert message.startswith(
        f"{path}: namespaces.\"bad name!\": invalid key 'bad name!': expected `str` matching regex"
    )


def test_long_values_are_truncated(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'[queue]\nmax_messages = "{"x" * 500}"\n')
    message = config_error(path)
    shown = message.split(" = ", 1)[1].split(": expected")[0]
    assert len(shown) == 80
    assert shown.endswith("...")


# --- Mistakes in the environment


def test_environment_errors_name_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[queue]\nmax_messages = 10\n")
    message = config_error(path, {"BROKER_QUEUE__MAX_MESSAGES": "0"})
    assert message == "$BROKER_QUEUE__MAX_MESSAGES: queue.max_messages = 0: expected `int` >= 1"


def test_file_errors_still_name_the_file_when_the_environment_sets_other_keys(
    tmp_path: Path,
) -> None:
    path = write_toml(tmp_path, "[queue]\nmax_bytes = 0\n")
    message = config_error(path, {"BROKER_QUEUE__MAX_MESSAGES": "5"})
    assert message == f"{path}: queue.max_bytes = 0: expected `int` >= 1"


def test_environment_enum_error_lists_the_choices() -> None:
    assert config_error(None, {"BROKER_LOG__LEVEL": "INFO"}) == (
        "$BROKER_LOG__LEVEL: log.level = 'INFO': "
        "expected one of 'debug', 'info', 'warning', 'error'"
    )


def test_environment_list_given_as_plain_text_suggests_a_toml_array() -> None:
    message = config_error(None, {"BROKER_SERVER__ALLOWED_ORIGINS": "https://a.example"})
    assert message == (
        "$BROKER_SERVER__ALLOWED_ORIGINS: server.allowed_origins = 'https://a.example': "
        """expected `array`, got `str` (write a TOML array, e.g. '["a", "b"]')"""
    )


def test_unknown_section_in_a_variable_name_lists_the_sections() -> None:
    assert config_error(None, {"BROKER_NOPE__X": "1"}) == (
        "$BROKER_NOPE__X: nope.x = '1': unknown key 'nope' (known keys: server, websocket, "
        "queue, hub, limits, default_namespace, namespaces, backplane, log, monitor, auth, api, "
        "console)"
    )


def test_unknown_key_in_a_variable_name_lists_the_keys_of_its_section() -> None:
    assert config_error(None, {"BROKER_HUB__MAILBOX": "1"}) == (
        "$BROKER_HUB__MAILBOX: hub.mailbox = '1': unknown key, did you mean 'mailbox_size'? "
        "(known keys: mailbox_size)"
    )


def test_section_variable_without_a_key_is_an_error() -> None:
    assert config_error(None, {"BROKER_QUEUE": "500"}) == (
        "$BROKER_QUEUE: queue = '500': expected BROKER_QUEUE__<KEY> with KEY one of "
        "max_messages, max_bytes, overflow, max_batch, max_batch_bytes, flush_interval"
    )


def test_variable_with_an_empty_level_is_an_error() -> None:
    message = config_error(None, {"BROKER_QUEUE____MAX_MESSAGES": "5"})
    assert message.startswith("$BROKER_QUEUE____MAX_MESSAGES: '5' is not a setting: expected")


def test_variable_going_below_a_single_value_is_an_error() -> None:
    assert config_error(None, {"BROKER_QUEUE__MAX_MESSAGES__X": "5"}) == (
        "$BROKER_QUEUE__MAX_MESSAGES__X: queue.max_messages.x = '5': "
        "queue.max_messages is a single value, not a table (set it whole)"
    )


def test_the_same_setting_twice_in_different_case_is_an_error() -> None:
    message = config_error(
        None, {"BROKER_QUEUE__MAX_MESSAGES": "5", "broker_queue__max_messages": "6"}
    )
    assert message == (
        "$broker_queue__max_messages: queue.max_messages = '6': "
        "already set by $BROKER_QUEUE__MAX_MESSAGES; set it once"
    )


def test_invalid_namespace_name_in_a_variable_names_the_variable() -> None:
    message = config_error(None, {"BROKER_NAMESPACES__NO!__PRESENCE": "true"})
    assert message.startswith(
        "$BROKER_NAMESPACES__NO!__PRESENCE: namespaces.\"no!\": invalid key 'no!': expected"
    )


# --- Rules across fields


def test_non_finite_durations_are_rejected() -> None:
    assert config_error(None, {"BROKER_WEBSOCKET__WRITE_TIMEOUT": "inf"}) == (
        "$BROKER_WEBSOCKET__WRITE_TIMEOUT: websocket.write_timeout = inf: expected a finite number"
    )


def test_allowed_origin_with_a_path_can_never_match(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\nallowed_origins = ["https://a.example/"]\n')
    assert config_error(path) == (
        f"{path}: server.allowed_origins[0] = 'https://a.example/': "
        "expected an origin, scheme://host[:port], without path, query or trailing '/'"
    )


def test_redis_backplane_needs_a_redis_url(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[backplane]\nkind = "redis"\nredis_url = "http://cache:6379"\n')
    assert config_error(path) == (
        f"{path}: backplane.redis_url = 'http://cache:6379': "
        "expected a redis://, rediss:// or unix:// URL (backplane.kind is 'redis')"
    )


def test_redis_urls_are_checked_one_by_one() -> None:
    message = config_error(
        None,
        {
            "BROKER_BACKPLANE__KIND": "redis",
            "BROKER_BACKPLANE__REDIS_URLS": '["redis://a:6379", "redis:/b:6379", "cache:6379"]',
        },
    )
    assert message.startswith("$BROKER_BACKPLANE__REDIS_URLS: backplane.redis_urls[2] = ")


def test_redis_url_is_not_checked_for_the_memory_backplane() -> None:
    settings = load_settings(None, {"BROKER_BACKPLANE__REDIS_URL": "not a url"})
    assert settings.backplane.kind is BackplaneKind.MEMORY


def test_validate_checks_settings_built_in_code() -> None:
    settings = Settings(server=ServerSettings(allowed_origins=["https://a.example/app"]))
    with pytest.raises(ConfigError, match=r"^settings: server\.allowed_origins\[0\] = "):
        validate(settings)
    validate(Settings())


# --- Secrets stay out of messages


def test_password_in_a_redis_url_is_masked(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, '[backplane]\nkind = "redis"\nredis_url = "http://:hunter2@cache:6379"\n'
    )
    message = config_error(path)
    assert "hunter2" not in message
    assert "backplane.redis_url = 'http://:***@cache:6379'" in message


def test_password_in_an_environment_redis_url_is_masked() -> None:
    message = config_error(
        None,
        {
            "BROKER_BACKPLANE__KIND": "redis",
            "BROKER_BACKPLANE__REDIS_URLS": '["redis://user:hunter2@a:6379", "tcp://:hunter2@b"]',
        },
    )
    assert "hunter2" not in message
    assert "backplane.redis_urls[1] = 'tcp://:***@b'" in message


def test_values_of_secret_looking_keys_are_masked(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[server]\napi_token = "s3cr3t"\n')
    message = config_error(path)
    assert "s3cr3t" not in message
    assert message.startswith(f"{path}: server.api_token = '***': unknown key")


def test_secrets_nested_in_an_unknown_table_are_masked(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[oauth]\npassword = "s3cr3t"\nurl = "https://u:pw@idp"\n')
    message = config_error(path)
    assert "s3cr3t" not in message
    assert ":pw@" not in message
    assert "oauth = {'password': '***', 'url': 'https://u:***@idp'}" in message


@pytest.mark.parametrize(
    ("environ", "secret"),
    [
        ({"BROKER_TOKEN": "tok-123"}, "tok-123"),
        ({"BROKER_URL": "amqp://guest:pw-123@rabbit"}, "pw-123"),
    ],
)
def test_secrets_in_bad_variable_names_are_masked(environ: dict[str, str], secret: str) -> None:
    assert secret not in config_error(None, environ)


def test_the_worker_health_check_timeout_reaches_uvicorns_supervisor() -> None:
    from broker.server import uvicorn_config

    settings = load_settings(None, {"BROKER_SERVER__WORKER_HEALTHCHECK_TIMEOUT": "45"})
    config = uvicorn_config(settings, app="broker.server:app_from_environment", workers=2)
    assert config.timeout_worker_healthcheck == 45
    # Not uvicorn's 5 s by default: busy workers on a saturated machine are not killed.
    assert Settings().server.worker_healthcheck_timeout == 20
    message = config_error(environ={"BROKER_SERVER__WORKER_HEALTHCHECK_TIMEOUT": "0"})
    assert "server.worker_healthcheck_timeout" in message and "0" in message
