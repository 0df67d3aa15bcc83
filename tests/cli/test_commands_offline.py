"""The `gatehouse` command without a stack: help, usage errors, `config check`, and a replica
that cannot be reached. Each runs the installed console script as a process of its own."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devstack.ports import free_port
from services.auth.tokens import generate_private_key_pem
from tests.gatehouse_cli import environment_without_settings, run_gatehouse

GROUPS = ("users", "sessions", "keys", "migrate", "config")
SECRET_PASSWORD = "hunter2-in-the-dsn"


def auth_environment(**overrides: str | None) -> dict[str, str]:
    """A complete, valid auth environment (nothing need answer at its addresses), changed by
    `overrides` (None: unset)."""
    env = {
        **environment_without_settings(),
        "GATEHOUSE_MYSQL_PRIMARY_DSN": "mysql://gatehouse:pw@127.0.0.1:3306/gatehouse",
        "GATEHOUSE_PEPPERS": "1:a-pepper-for-these-tests",
        "GATEHOUSE_JWT_PRIVATE_KEY": generate_private_key_pem(),
        "GATEHOUSE_DEVICE_COOKIE_SECRET": "d" * 40,
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_help_lists_every_group_and_needs_no_setting() -> None:
    shown = run_gatehouse("--help", env=environment_without_settings())

    assert shown.exit_code == 0, shown.stderr
    assert all(group in shown.stdout for group in GROUPS)
    for group, commands in (
        ("users", ("show", "lock", "unlock", "delete")),
        ("sessions", ("list", "revoke")),
        ("config", ("check",)),
    ):
        group_help = run_gatehouse(group, "--help", env=environment_without_settings())
        assert group_help.exit_code == 0, group_help.stderr
        assert all(command in group_help.stdout for command in commands), group_help.stdout
    revoke_help = run_gatehouse("sessions", "revoke", "--help", env=environment_without_settings())
    assert "--all" in revoke_help.stdout and "--json" in revoke_help.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["--no-such-option", "users", "show", "alice"],
        ["users"],
        ["users", "show"],
        ["users", "lock", "alice", "bob"],
        ["users", "show", "alice", "--no-such-option"],
        ["sessions", "revoke", "alice"],
        ["sessions", "revoke", "alice", "an-id", "--all"],
        ["config", "check", "--tier", "nowhere"],
        ["--auth-address", "no-port-here", "users", "show", "alice"],
    ],
    ids=lambda args: " ".join(args) or "nothing",
)
def test_a_usage_error_exits_2_with_one_line_and_needs_no_setting(args: list[str]) -> None:
    refused = run_gatehouse(*args, env=environment_without_settings())

    assert refused.exit_code == 2, (refused.stdout, refused.stderr)
    assert len(refused.stderr_lines) == 1 and refused.stderr.startswith("gatehouse: ")
    assert refused.stdout == ""


def test_a_session_id_starting_with_a_dash_is_taken_after_a_double_dash() -> None:
    # Session ids are base64url, so some start with '-': argparse alone takes them for options.
    bare = run_gatehouse(
        "sessions", "revoke", "alice", "-X29aQ", env=environment_without_settings()
    )
    assert bare.exit_code == 2
    assert "after '--'" in bare.stderr, bare.stderr

    after = run_gatehouse(
        "sessions", "revoke", "alice", "--", "-X29aQ", env=environment_without_settings()
    )
    # Parsed: it gets as far as loading the settings, which this environment lacks.
    assert "unrecognized arguments" not in after.stderr and "GATEHOUSE_" in after.stderr, (
        after.stderr
    )


def test_a_replica_that_cannot_be_reached_exits_1_saying_what_to_check() -> None:
    nobody = str(free_port())
    by_default = run_gatehouse("users", "show", "alice", env={"GATEHOUSE_AUTH_PORT": nobody})
    named = run_gatehouse(
        "users",
        "lock",
        "alice",
        "--json",  # accepted after the command too
        "--auth-address",
        f"127.0.0.1:{nobody}",
        env=environment_without_settings(),
    )

    for outcome in (by_default, named):
        assert outcome.exit_code == 1, outcome.stderr
        (line,) = outcome.stderr_lines
        assert f"cannot reach the auth replica at 127.0.0.1:{nobody}" in line
        assert "GATEHOUSE_AUTH_PORT" in line and "--auth-address" in line
        assert outcome.stdout == ""


def test_an_operator_socket_nobody_listens_on_is_not_sent_to_a_tcp_address(
    tmp_path: Path,
) -> None:
    """In plaintext a replica refuses operator calls over TCP (PERMISSION_DENIED): naming one
    with --auth-address, as the command used to advise, cannot help."""
    path = tmp_path / "operator.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left_behind:
        left_behind.bind(str(path))  # a replica that died: its socket file, nobody listening
    outcome = run_gatehouse(
        "users",
        "show",
        "alice",
        env={**environment_without_settings(), "GATEHOUSE_OPERATOR_SOCKET": str(path)},
    )

    assert outcome.exit_code == 1, outcome.stderr
    (line,) = outcome.stderr_lines
    assert f"cannot reach the auth replica at {path}" in line
    assert "GATEHOUSE_OPERATOR_SOCKET" in line and "another auth pod" in line
    assert "--auth-address" not in line


def test_config_check_passes_an_environment_the_service_would_start_with() -> None:
    human = run_gatehouse("config", "check", env=auth_environment())
    scripted = run_gatehouse("--json", "config", "check", env=auth_environment())

    assert human.exit_code == 0, human.stderr
    assert "configuration of the auth service is valid" in human.stdout
    assert scripted.exit_code == 0, scripted.stderr
    assert scripted.json() == {"tier": "auth", "valid": True, "problems": []}


def test_config_check_lists_every_problem_one_per_line_without_quoting_secrets() -> None:
    refused = run_gatehouse(
        "config",
        "check",
        env=auth_environment(
            GATEHOUSE_BCRYPT_COST="99",
            GATEHOUSE_LEASE_TTL="soon",
            GATEHOUSE_PEPPERS=None,
            GATEHOUSE_MYSQL_PRIMARY_DSN=f"postgres://gatehouse:{SECRET_PASSWORD}@db/x",
        ),
    )

    assert refused.exit_code == 2
    assert sorted(line.split()[1].split("=")[0] for line in refused.stderr_lines) == [
        "GATEHOUSE_BCRYPT_COST",
        "GATEHOUSE_LEASE_TTL",
        "GATEHOUSE_MYSQL_PRIMARY_DSN",
        "GATEHOUSE_PEPPERS",
    ]
    assert SECRET_PASSWORD not in refused.stderr


def test_config_check_lists_every_failed_cross_check() -> None:
    refused = run_gatehouse(
        "config",
        "check",
        "--json",
        env=auth_environment(
            GATEHOUSE_DEVICE_COOKIE_SECRET="short",
            GATEHOUSE_LOGIN_FIRST_DELAY="10",
            GATEHOUSE_LOGIN_MAX_DELAY="5",
            GATEHOUSE_TOKEN_ISSUER="",
        ),
    )

    assert refused.exit_code == 2
    problems = refused.json()["problems"]
    assert len(problems) == 3 and len(refused.stderr_lines) == 3
    for variable in (
        "GATEHOUSE_DEVICE_COOKIE_SECRET",
        "GATEHOUSE_LOGIN_FIRST_DELAY",
        "GATEHOUSE_TOKEN_ISSUER",
    ):
        assert sum(variable in problem for problem in problems) == 1, problems


def test_config_check_of_the_http_tier_uses_its_settings() -> None:
    refused = run_gatehouse(
        "config",
        "check",
        "--tier",
        "http",
        env={**environment_without_settings(), "GATEHOUSE_HTTP_WORKERS": "0"},
    )

    assert refused.exit_code == 2
    assert [line.split()[1] for line in refused.stderr_lines] == [
        "GATEHOUSE_HTTP_WORKERS",
        "GATEHOUSE_CSRF_SECRET",
    ]


@pytest.mark.parametrize("ids", [[], ["an-id", "--all"]], ids=["neither", "both"])
def test_revoke_needs_ids_or_all_but_not_both(ids: list[str]) -> None:
    refused = run_gatehouse("sessions", "revoke", "alice", *ids, env=environment_without_settings())

    assert refused.exit_code == 2
    assert refused.stderr_lines == [
        "gatehouse: name the sessions to end (IDs, as `gatehouse sessions list` shows them) or "
        "give --all, not both"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["users", "show", "\udcff\udcfe"],  # the bytes ff fe, as the process's argv gets them
        ["sessions", "revoke", "alice", "--", "id-\udcff"],
    ],
    ids=("a username", "a session id"),
)
def test_an_argument_that_is_not_utf8_is_a_usage_error(args: list[str]) -> None:
    """It ended in a UnicodeEncodeError traceback where the request was built (exit 1)."""
    refused = run_gatehouse(*args, env=auth_environment(GATEHOUSE_AUTH_PORT=str(free_port())))

    assert refused.exit_code == 2, refused.stderr
    assert len(refused.stderr_lines) == 1 and "is not UTF-8 text: b'" in refused.stderr
