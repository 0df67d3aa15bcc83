"""The gatehouse command's settings."""

from __future__ import annotations

import pytest

from services.cli.settings import CliSettings
from services.foundation.config import ConfigError, load_settings


def test_the_cli_refuses_a_bad_trust_domain() -> None:
    with pytest.raises(ConfigError, match="GATEHOUSE_RPC_TRUST_DOMAIN"):
        load_settings(CliSettings, {"GATEHOUSE_RPC_TRUST_DOMAIN": "gh-prod..prod"})
    assert load_settings(CliSettings, {}).rpc_trust_domain == "gatehouse"
