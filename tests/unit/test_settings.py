"""Settings from LIENTHONG_* variables: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import DEFAULT_DIRECTORY, Settings, parse_duration


def _error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    return info.value.detail


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8080
    assert settings.namespace == "lienthong"
    assert settings.shards == 8
    assert settings.retry_delays == (5.0, 30.0, 300.0, 1800.0, 7200.0)
    assert settings.push_timeout == 10.0
    assert settings.allow_insecure_push is False
    assert settings.migrate_on_start is True
    assert settings.log_format == "auto"
    assert settings.directory_path == DEFAULT_DIRECTORY
    assert DEFAULT_DIRECTORY.is_file()
    assert settings.database_url == ""
    assert settings.store_url.startswith("sqlite+aiosqlite:///")
    assert settings.store_url.endswith("/var/lienthong.db")
    assert settings.blob_dir == Path("var") / "blobs"


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("LIENTHONG_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LIENTHONG_SHARDS", "3")
    assert Settings.from_env().shards == 3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("90", 90.0),
        (" 5s ", 5.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert Settings.from_env({"LIENTHONG_PUSH_TIMEOUT": text}).push_timeout == pytest.approx(
        seconds
    )


@pytest.mark.parametrize("text", ["", "5 s", "5sec", "-5s", "5d", "s", "1h30m", "abc", "1e3"])
def test_bad_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
    detail = _error({"LIENTHONG_RELAY_INTERVAL": text})
    assert detail.startswith("LIENTHONG_RELAY_INTERVAL=")


def test_every_duration_setting() -> None:
    settings = Settings.from_env(
        {
            "LIENTHONG_PUSH_TIMEOUT": "250ms",
            "LIENTHONG_RELAY_INTERVAL": "5s",
            "LIENTHONG_RELAY_GRACE": "30m",
            "LIENTHONG_DRAIN_TIMEOUT": "2h",
        }
    )
    assert (settings.push_timeout, settings.relay_interval) == (0.25, 5.0)
    assert (settings.relay_grace, settings.drain_timeout) == (1800.0, 7200.0)


def test_retry_delays_list() -> None:
    settings = Settings.from_env({"LIENTHONG_RETRY_DELAYS": "250ms, 5s,30m ,2h"})
    assert settings.retry_delays == (0.25, 5.0, 1800.0, 7200.0)
    assert "needs at least one" in _error({"LIENTHONG_RETRY_DELAYS": " , "})
    assert "LIENTHONG_RETRY_DELAYS" in _error({"LIENTHONG_RETRY_DELAYS": "5s,soon"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        (" True ", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_booleans(text: str, value: bool) -> None:
    settings = Settings.from_env(
        {"LIENTHONG_ALLOW_INSECURE_PUSH": text, "LIENTHONG_MIGRATE_ON_START": text}
    )
    assert settings.allow_insecure_push is value
    assert settings.migrate_on_start is value


@pytest.mark.parametrize("text", ["", "2", "y", "enabled", "truee"])
def test_bad_boolean(text: str) -> None:
    detail = _error({"LIENTHONG_MIGRATE_ON_START": text})
    assert detail.startswith("LIENTHONG_MIGRATE_ON_START=")
    assert "boolean" in detail


def test_integers() -> None:
    settings = Settings.from_env(
        {
            "LIENTHONG_HTTP_PORT": "9000",
            "LIENTHONG_SHARDS": "16",
            "LIENTHONG_PREFETCH": "1",
            "LIENTHONG_MAX_ATTEMPTS": "3",
            "LIENTHONG_DELIVERY_LIMIT": "50",
            "LIENTHONG_MAX_BODY_BYTES": "1048576",
        }
    )
    assert settings.http_port == 9000
    assert (settings.shards, settings.prefetch, settings.max_attempts) == (16, 1, 3)
    assert (settings.delivery_limit, settings.max_body_bytes) == (50, 1048576)
    assert Settings.from_env({"LIENTHONG_HTTP_PORT": "0"}).http_port == 0


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("LIENTHONG_SHARDS", "0", "positive"),
        ("LIENTHONG_SHARDS", "-2", "positive"),
        ("LIENTHONG_SHARDS", "eight", "invalid literal"),
        ("LIENTHONG_PREFETCH", "1.5", "invalid literal"),
        ("LIENTHONG_HTTP_PORT", "65536", "not a TCP port"),
        ("LIENTHONG_HTTP_PORT", "-1", "not a TCP port"),
        ("LIENTHONG_MAX_BODY_BYTES", "", "invalid literal"),
    ],
)
def test_bad_integers(name: str, text: str, fragment: str) -> None:
    detail = _error({name: text})
    assert detail.startswith(f"{name}={text!r}: ")
    assert fragment in detail


def test_urls_and_paths() -> None:
    settings = Settings.from_env(
        {
            "LIENTHONG_AMQP_URL": "amqps://gw:pw@rabbit.lienthong.internal:5671/lienthong",
            "LIENTHONG_DATABASE_URL": "postgresql+asyncpg://gw:pw@db/lienthong",
            "LIENTHONG_DIRECTORY": "/etc/lienthong/directory.yaml",
            "LIENTHONG_DATA_DIR": "/var/lib/lienthong",
        }
    )
    assert settings.amqp_url == "amqps://gw:pw@rabbit.lienthong.internal:5671/lienthong"
    assert settings.store_url == "postgresql+asyncpg://gw:pw@db/lienthong"
    assert settings.directory_path == Path("/etc/lienthong/directory.yaml")
    assert settings.blob_dir == Path("/var/lib/lienthong/blobs")
    sqlite = Settings.from_env({"LIENTHONG_DATABASE_URL": "sqlite+aiosqlite:///tmp/x.db"})
    assert sqlite.store_url == "sqlite+aiosqlite:///tmp/x.db"


def test_choices_and_namespace() -> None:
    settings = Settings.from_env(
        {
            "LIENTHONG_LOG_FORMAT": "json",
            "LIENTHONG_LOG_LEVEL": "debug",
            "LIENTHONG_NAMESPACE": "lienthong-test.v2",
            "LIENTHONG_HTTP_HOST": "0.0.0.0",
        }
    )
    assert (settings.log_format, settings.log_level) == ("json", "debug")
    assert settings.namespace == "lienthong-test.v2"
    assert settings.http_host == "0.0.0.0"
    assert "one of auto, console, json" in _error({"LIENTHONG_LOG_FORMAT": "yaml"})
    assert "LIENTHONG_LOG_LEVEL" in _error({"LIENTHONG_LOG_LEVEL": "INFO"})
    for bad in ("Lienthong", "1abc", "a b", "x" * 42, ""):
        assert _error({"LIENTHONG_NAMESPACE": bad}).startswith("LIENTHONG_NAMESPACE=")


@pytest.mark.parametrize(
    "name",
    ["LIENTHONG_SHARD", "LIENTHONG_AMQP", "LIENTHONG_DIRECTORY_PATH", "LIENTHONG_", "LIENTHONG_X"],
)
def test_unknown_variable_is_named(name: str) -> None:
    detail = _error({"LIENTHONG_SHARDS": "4", name: "1"})
    assert detail.startswith(f"{name}: unknown setting")
    assert "LIENTHONG_SHARDS" in detail  # the known names are listed to spot the typo
    assert "LIENTHONG_DIRECTORY," in detail


def test_other_variables_are_ignored() -> None:
    env = {
        "PATH": "/usr/bin",
        "AMQP_URL": "not a url",
        "LIENTHONGX": "1",
        "MY_LIENTHONG_SHARDS": "zero",
        "HOME": "/root",
    }
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("LIENTHONG_AMQP_URL", "http://gateway:s3cr3t-Pa55@rabbit:5672/"),
        ("LIENTHONG_AMQP_URL", "rabbit://gateway:s3cr3t-Pa55@rabbit:5672/"),
        ("LIENTHONG_DATABASE_URL", "postgresql://gateway:s3cr3t-Pa55@db:5432/lienthong"),
        ("LIENTHONG_DATABASE_URL", "mysql://gateway:s3cr3t-Pa55@db/lienthong"),
    ],
)
def test_malformed_url_names_the_variable_without_the_password(name: str, url: str) -> None:
    detail = _error({name: url})
    assert detail.startswith(f"{name}=")
    assert "s3cr3t-Pa55" not in detail
    assert "gateway:***@" in detail  # the rest of the value is shown to help the operator


def test_url_without_scheme_does_not_leak_the_password() -> None:
    # A forgotten "amqp://" is the most likely typo; urlsplit then reads "gateway" as the
    # scheme and finds no password, so the raw value would be shown.
    detail = _error({"LIENTHONG_AMQP_URL": "gateway:s3cr3t-Pa55@rabbit:5672/"})
    assert detail.startswith("LIENTHONG_AMQP_URL=")
    assert "s3cr3t-Pa55" not in detail


def test_unparseable_url_is_a_config_error() -> None:
    # urlsplit raises ValueError("Invalid IPv6 URL"); it must become a ConfigError naming
    # the variable (the CLI turns only GatewayError into a one-line message).
    detail = _error({"LIENTHONG_AMQP_URL": "amqp://gateway:s3cr3t-Pa55@[::1/"})
    assert detail.startswith("LIENTHONG_AMQP_URL=")
    assert "s3cr3t-Pa55" not in detail


def test_with_replaces_fields() -> None:
    base = Settings()
    changed = base.with_(shards=2, namespace="t")
    assert (changed.shards, changed.namespace) == (2, "t")
    assert base.shards == 8
    with pytest.raises(TypeError):
        base.with_(no_such_field=1)
