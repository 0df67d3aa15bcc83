"""The gatehouse command's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.settings import CliSettings
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
