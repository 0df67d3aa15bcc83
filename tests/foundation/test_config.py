from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.foundation.config import ConfigError, describe, load_settings, parse_prefix, setting


@dataclass(frozen=True, kw_only=True)
class Example:
    port: int = setting("EX_PORT", 8000, "port")
    ratio: float = setting("EX_RATIO", 0.5, "ratio")
    enabled: bool = setting("EX_ENABLED", False, "flag")
    hosts: tuple[str, ...] = setting("EX_HOSTS", ("a:1",), "hosts")
    prefix: str = setting("EX_PREFIX", "/x/", "prefix", parse=parse_prefix)
    password: str = setting("EX_PASSWORD", help="secret", secret=True)


def test_defaults_and_conversions() -> None:
    loaded = load_settings(
        Example,
        {
            "EX_PORT": "9000",
            "EX_RATIO": "0.25",
            "EX_ENABLED": "yes",
            "EX_HOSTS": "h1:1, h2:2,",
            "EX_PASSWORD": "pw",
        },
    )
    assert (loaded.port, loaded.ratio, loaded.enabled, loaded.hosts) == (
        9000,
        0.25,
        True,
        ("h1:1", "h2:2"),
    )
    assert loaded.prefix == "/x/"


def test_every_problem_is_named_and_secrets_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as failed:
        load_settings(Example, {"EX_PORT": "eighty", "EX_ENABLED": "maybe", "EX_PREFIX": "x"})
    text = str(failed.value)
    assert "EX_PORT='eighty'" in text and "EX_ENABLED='maybe'" in text and "EX_PREFIX='x'" in text
    assert "EX_PASSWORD is required" in text


def test_secret_values_stay_out_of_messages_and_repr() -> None:
    @dataclass(frozen=True, kw_only=True)
    class WithSecretNumber:
        token: int = setting("EX_TOKEN", help="secret number", secret=True)

    with pytest.raises(ConfigError) as failed:
        load_settings(WithSecretNumber, {"EX_TOKEN": "hunter2"})
    assert "hunter2" not in str(failed.value)
    loaded = load_settings(Example, {"EX_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(loaded)


def test_describe_lists_every_variable() -> None:
    names = [info.env for info in describe(Example)]
    assert names == ["EX_PORT", "EX_RATIO", "EX_ENABLED", "EX_HOSTS", "EX_PREFIX", "EX_PASSWORD"]
