"""The gatehouse command's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.settings import CliSettings, parse_address
from services.foundation.config import ConfigError, load_settings


def test_the_cli_refuses_a_bad_trust_domain() -> None:
    with pytest.raises(ConfigError, match="GATEHOUSE_RPC_TRUST_DOMAIN"):
        load_settings(CliSettings, {"GATEHOUSE_RPC_TRUST_DOMAIN": "gh-prod..prod"})
    assert load_settings(CliSettings, {}).rpc_trust_domain == "gatehouse"


def test_with_mtls_each_missing_tls_file_is_named_by_its_setting(tmp_path: Path) -> None:
    """Without GATEHOUSE_RPC_TLS_CA the command said `cannot load the operator certificate:
    [Errno 21] Is a directory: '.'`, pointing at the wrong file."""
    pem = tmp_path / "operator.pem"
    pem.write_text("not read here")
    with pytest.raises(ConfigError) as refused:
        load_settings(
            CliSettings,
            {
                "GATEHOUSE_RPC_TLS": "mtls",
                "GATEHOUSE_CLI_TLS_CERT": str(pem),
                "GATEHOUSE_CLI_TLS_KEY": str(tmp_path / "missing.key"),
            },
        )
    assert list(refused.value.problems) == [
        "GATEHOUSE_RPC_TLS_CA (the CA of the RPC's mutual TLS) is required with"
        " GATEHOUSE_RPC_TLS=mtls",
        f"GATEHOUSE_CLI_TLS_KEY: {tmp_path / 'missing.key'} is not a readable file",
    ]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("auth:7000", ("auth", 7000)),
        ("[::1]:7000", ("::1", 7000)),
        (" 10.0.0.1:1 ", ("10.0.0.1", 1)),
    ],
)
def test_an_address_is_host_port_or_a_bracketed_v6_address(
    text: str, address: tuple[str, int]
) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize(
    "text", ["[::1:7000", "::1:7000", "[]:7000", "a]:7000", "[auth]:7000", "auth", "auth:0"]
)
def test_a_malformed_address_is_refused_not_half_parsed(text: str) -> None:
    """'[::1:7000' was taken as host '[:' and port 7000 ('cannot reach [:]:7000', exit 1)."""
    with pytest.raises(ValueError, match="expected host:port"):
        parse_address(text)
