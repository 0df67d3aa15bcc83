"""etcd access settings: checked together at start, the password never shown."""

from __future__ import annotations

import pytest

from services.foundation.config import ConfigError, load_settings
from services.http.settings import HttpSettings

BASE = {"GATEHOUSE_CSRF_SECRET": "x" * 40}
PASSWORD = "not-to-be-shown-4711"


def problems(**env: str) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(HttpSettings, {**BASE, **env})
    return str(raised.value)


def test_inconsistent_etcd_access_is_refused_without_showing_the_password(tmp_path) -> None:
    message = problems(GATEHOUSE_ETCD_PASSWORD=PASSWORD)
    assert "GATEHOUSE_ETCD_USERNAME" in message and PASSWORD not in message
    assert "GATEHOUSE_ETCD_PASSWORD" in problems(GATEHOUSE_ETCD_USERNAME="gatehouse-http")
    assert "GATEHOUSE_ETCD_KEY_FILE" in problems(
        GATEHOUSE_ETCD_CA_FILE=str(tmp_path / "missing-ca.crt"),
        GATEHOUSE_ETCD_CERT_FILE=str(tmp_path / "missing.crt"),
    )
    assert "is not a readable file" in problems(
        GATEHOUSE_ETCD_USERNAME="gatehouse-http",
        GATEHOUSE_ETCD_PASSWORD_FILE=str(tmp_path / "missing"),
    )


def test_password_file_is_read_and_never_in_a_repr(tmp_path) -> None:
    password_file = tmp_path / "etcd.password"
    password_file.write_text(PASSWORD + "\n")
    settings = load_settings(
        HttpSettings,
        {
            **BASE,
            "GATEHOUSE_ETCD_USERNAME": "gatehouse-http",
            "GATEHOUSE_ETCD_PASSWORD_FILE": str(password_file),
        },
    )
    access = settings.etcd_access
    assert access.current_password() == PASSWORD
    assert PASSWORD not in repr(access) and PASSWORD not in repr(settings)
    inline = load_settings(
        HttpSettings,
        {**BASE, "GATEHOUSE_ETCD_USERNAME": "u", "GATEHOUSE_ETCD_PASSWORD": PASSWORD},
    )
    assert PASSWORD not in repr(inline) and PASSWORD not in repr(inline.etcd_access)
