from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.foundation.config import (
    MAX_SECRET_FILE_BYTES,
    ConfigError,
    bounds_problems,
    check_bounds,
    describe,
    load_settings,
    parse_prefix,
    report_problems,
    setting,
)


@dataclass(frozen=True, kw_only=True)
class Example:
    port: int = setting("EX_PORT", 8000, "port", at_least=1)
    ratio: float = setting("EX_RATIO", 0.5, "ratio", above=0)
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
    assert "EX_PASSWORD is required (or EX_PASSWORD_FILE): secret" in text


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


@dataclass(frozen=True, kw_only=True)
class Bounded:
    workers: int = setting("EX_WORKERS", 2, "workers", at_least=1)
    ratio: float = setting("EX_SHARE", 0.5, "share", above=0, at_most=1)
    server: str = setting("EX_SERVER", "a", "server", choices=("a", "b"))

    def __post_init__(self) -> None:
        check_bounds(self)


@pytest.mark.parametrize(
    ("env", "raw", "message"),
    [
        ("EX_WORKERS", "0", "EX_WORKERS must be at least 1"),
        ("EX_SHARE", "0", "EX_SHARE must be above 0"),
        ("EX_SHARE", "1.5", "EX_SHARE must be at most 1"),
        ("EX_SERVER", "c", "EX_SERVER must be one of a, b"),
    ],
)
def test_a_value_outside_its_declared_bounds_is_refused_by_name(
    env: str, raw: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(Bounded, {env: raw})


def test_a_number_without_a_least_value_cannot_be_declared() -> None:
    with pytest.raises(TypeError, match="EX_TIMEOUT: declare the least value"):
        setting("EX_TIMEOUT", 2.0, "seconds")
    with pytest.raises(TypeError, match="EX_COUNT"):
        setting("EX_COUNT", 3, "count", at_most=10)
    assert setting("EX_ON", True, "flag") is not None  # a bool is not a number here


def test_values_on_the_edge_of_their_bounds_are_accepted() -> None:
    loaded = load_settings(Bounded, {"EX_WORKERS": "1", "EX_SHARE": "1", "EX_SERVER": "b"})
    assert (loaded.workers, loaded.ratio, loaded.server) == (1, 1.0, "b")


@dataclass(frozen=True, kw_only=True)
class CrossChecked:
    low: int = setting("EX_LOW", 1, "low", at_least=0)
    high: int = setting("EX_HIGH", 2, "high", at_least=0)
    name: str = setting("EX_NAME", "x", "name")

    def __post_init__(self) -> None:
        problems = bounds_problems(self)
        if self.low > self.high:
            problems.append("need EX_LOW <= EX_HIGH")
        if not self.name:
            problems.append("EX_NAME must not be empty")
        report_problems(problems)


def test_values_that_do_not_convert_and_values_out_of_bounds_are_reported_together() -> None:
    with pytest.raises(ConfigError) as failed:
        load_settings(CrossChecked, {"EX_LOW": "-1", "EX_HIGH": "many"})
    assert failed.value.problems == (
        "EX_LOW must be at least 0",
        "EX_HIGH='many' is not valid: invalid literal for int() with base 10: 'many'",
    )
    assert str(failed.value) == "; ".join(failed.value.problems)


def test_every_failed_cross_check_is_reported_in_one_pass() -> None:
    with pytest.raises(ConfigError) as failed:
        load_settings(CrossChecked, {"EX_LOW": "5", "EX_HIGH": "3", "EX_NAME": ""})
    assert failed.value.problems == ("need EX_LOW <= EX_HIGH", "EX_NAME must not be empty")


def test_a_plain_value_error_of_a_post_init_check_is_still_one_problem() -> None:
    @dataclass(frozen=True, kw_only=True)
    class OldStyle:
        port: int = setting("EX_OLD_PORT", 1, "port", at_least=1)

        def __post_init__(self) -> None:
            if self.port == 7:
                raise ValueError("EX_OLD_PORT must not be 7")

    with pytest.raises(ConfigError) as failed:
        load_settings(OldStyle, {"EX_OLD_PORT": "7"})
    assert failed.value.problems == ("EX_OLD_PORT must not be 7",)


@dataclass(frozen=True, kw_only=True)
class WithSecretFile:
    password: str = setting("EX_PASSWORD", help="secret", secret=True)
    port: int = setting("EX_PORT", 8000, "port", at_least=1)
    token: int = setting("EX_TOKEN", 0, "secret number", secret=True, at_least=0)
    # Declared by the class itself: read its own way, not as EX_KEY's value.
    key: str = setting("EX_KEY", "", "secret key", secret=True)
    key_file: str = setting("EX_KEY_FILE", "", "file the class reads itself")


def test_a_secret_is_read_whole_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    # As Kubernetes mounts a Secret: each key a link into the ..data link to a timestamped folder.
    (tmp_path / "..2026_12_07").mkdir()
    (tmp_path / "..data").symlink_to("..2026_12_07")
    password, token = tmp_path / "password", tmp_path / "token"
    (tmp_path / "..2026_12_07" / "password").write_bytes(b" hunter2 with spaces \r\n")
    password.symlink_to("..data/password")
    token.write_text("42\n")  # int() ignores the line break
    loaded = load_settings(
        WithSecretFile,
        {
            "EX_PASSWORD_FILE": str(password),
            "EX_TOKEN_FILE": str(token),
            "EX_PORT_FILE": str(token),  # not a secret: no file variable, ignored
            "EX_KEY_FILE": str(password),
        },
    )
    assert (loaded.password, loaded.token, loaded.port) == (" hunter2 with spaces \r\n", 42, 8000)
    assert (loaded.key, loaded.key_file) == ("", str(password))
    assert [info.file_env for info in describe(WithSecretFile)] == [
        "EX_PASSWORD_FILE",
        None,
        "EX_TOKEN_FILE",
        None,
        None,
    ]


def test_a_secret_file_that_cannot_be_used_is_named_with_every_other_problem(
    tmp_path: Path,
) -> None:
    (tmp_path / "large").write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    os.mkfifo(tmp_path / "fifo")  # opening it for reading must not wait for a writer
    cases = {
        f"{tmp_path}/missing": f"EX_PASSWORD_FILE='{tmp_path}/missing' cannot be read: No such",
        f"{tmp_path}/large": f"EX_PASSWORD_FILE='{tmp_path}/large' holds more than 65536 bytes",
        f"{tmp_path}/latin1": f"EX_PASSWORD_FILE='{tmp_path}/latin1' is not UTF-8 text",
        f"{tmp_path}/fifo": f"EX_PASSWORD_FILE='{tmp_path}/fifo' is not a regular file",
        f"{tmp_path}/": f"EX_PASSWORD_FILE='{tmp_path}/' is not a regular file",  # the folder
        # A regular file whose read fails (EIO: no mapping at offset 0).
        "/proc/self/mem": "EX_PASSWORD_FILE='/proc/self/mem' cannot be read: Input/output error",
        # The secret itself, pasted by mistake: not an absolute path, so not shown.
        "1:hunter2": "EX_PASSWORD_FILE (not an absolute path; not shown) cannot be read",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError) as failed:
            load_settings(WithSecretFile, {"EX_PASSWORD_FILE": path, "EX_PORT": "0"})
        assert len(failed.value.problems) == 2, failed.value.problems
        assert failed.value.problems[0].startswith(message), failed.value.problems
        assert failed.value.problems[1] == "EX_PORT must be at least 1"
        assert "hunter2" not in str(failed.value)
    (tmp_path / "largest").write_bytes(b"x" * MAX_SECRET_FILE_BYTES)
    loaded = load_settings(WithSecretFile, {"EX_PASSWORD_FILE": f"{tmp_path}/largest"})
    assert loaded.password == "x" * MAX_SECRET_FILE_BYTES


def test_a_secret_set_both_ways_or_from_an_empty_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("from the file")
    with pytest.raises(ConfigError) as failed:
        load_settings(
            WithSecretFile,
            {"EX_PASSWORD": "inline", "EX_PASSWORD_FILE": str(tmp_path / "password")},
        )
    assert failed.value.problems == ("set EX_PASSWORD or EX_PASSWORD_FILE, not both",)
    with pytest.raises(ConfigError) as failed:
        load_settings(WithSecretFile, {"EX_PASSWORD_FILE": ""})
    assert failed.value.problems == (
        "EX_PASSWORD_FILE is empty: name the file that holds EX_PASSWORD",
    )
    with pytest.raises(ConfigError) as failed:
        load_settings(WithSecretFile, {})
    assert failed.value.problems == ("EX_PASSWORD is required (or EX_PASSWORD_FILE): secret",)


def test_a_malformed_secret_file_names_its_variable_but_not_its_content(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("hunter2\n")
    with pytest.raises(ConfigError) as failed:
        load_settings(
            WithSecretFile,
            {"EX_PASSWORD": "pw", "EX_TOKEN_FILE": str(tmp_path / "token")},
        )
    assert failed.value.problems == (
        "EX_TOKEN (from EX_TOKEN_FILE) is not valid (value not shown: secret)",
    )
