"""The key folder: read at start (a config error when bad), re-read while running (a bad file
keeps the last good keys), and Kubernetes' symlink swap of a Secret volume noticed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from services.auth.settings import AuthSettings
from services.auth.signing.folder import key_id
from services.auth.signing.sources import KeyFolder
from services.auth.tokens import generate_private_key_pem, load_private_key
from services.foundation.config import ConfigError, load_settings

BASE_ENV = {
    "GATEHOUSE_MYSQL_PRIMARY_DSN": "mysql://app:pw@127.0.0.1:3306/gatehouse",
    "GATEHOUSE_PEPPERS": "1:pepper",
    "GATEHOUSE_DEVICE_COOKIE_SECRET": "d" * 32,
}


def kid_of(pem: str) -> str:
    return key_id(load_private_key(pem))


def test_a_bad_file_while_running_keeps_the_last_good_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = generate_private_key_pem()
    (tmp_path / "key-1.pem").write_text(first)
    folder = KeyFolder(tmp_path)
    assert set(folder.keys) == {kid_of(first)}

    (tmp_path / "key-2.pem").write_text("-----BEGIN PRIVATE KEY-----\nhunter2\n")
    with caplog.at_level(logging.ERROR, "services.auth.signing.sources"):
        assert not folder.reread()
        assert not folder.reread()  # the same problem: not logged again
    assert set(folder.keys) == {kid_of(first)}
    assert [record.getMessage() for record in caplog.records if "key-2.pem" in record.getMessage()]
    assert len(caplog.records) == 1 and "hunter2" not in caplog.text

    second = generate_private_key_pem()
    (tmp_path / "key-2.pem").write_text(second)
    assert folder.reread()
    assert set(folder.keys) == {kid_of(first), kid_of(second)}


def test_a_secret_volume_s_symlink_swap_is_noticed(tmp_path: Path) -> None:
    """Kubernetes writes a new hidden folder, then points `..data` at it; the visible names are
    links through `..data`, so their own inodes and mtimes never change."""
    first, second = generate_private_key_pem(), generate_private_key_pem()
    old = tmp_path / "..2026_12_03_old"
    old.mkdir()
    (old / "key-1.pem").write_text(first)
    (old / "key-2.pem").write_text(first)  # the same key under two names at first
    (tmp_path / "..data").symlink_to(old.name)
    for name in ("key-1.pem", "key-2.pem"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    folder = KeyFolder(tmp_path)
    assert set(folder.keys) == {kid_of(first)}

    new = tmp_path / "..2026_12_03_new"
    new.mkdir()
    (new / "key-1.pem").write_text(first)
    (new / "key-2.pem").write_text(second)
    (tmp_path / "..data_tmp").symlink_to(new.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert folder.reread()
    assert set(folder.keys) == {kid_of(first), kid_of(second)}


def test_a_bad_key_folder_is_a_config_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "key-1.pem").write_text("-----BEGIN PRIVATE KEY-----\nhunter2\n")
    with pytest.raises(ConfigError, match=r"key-1\.pem is not usable") as refused:
        load_settings(AuthSettings, {**BASE_ENV, "GATEHOUSE_JWT_KEYS_DIR": str(tmp_path)})
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ConfigError, match="No such file or directory"):
        load_settings(AuthSettings, {**BASE_ENV, "GATEHOUSE_JWT_KEYS_DIR": str(tmp_path / "x")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no key file"):
        load_settings(AuthSettings, {**BASE_ENV, "GATEHOUSE_JWT_KEYS_DIR": str(tmp_path / "empty")})


def test_one_key_setting_or_the_other(tmp_path: Path) -> None:
    (tmp_path / "key-1.pem").write_text(generate_private_key_pem())
    both = {
        **BASE_ENV,
        "GATEHOUSE_JWT_KEYS_DIR": str(tmp_path),
        "GATEHOUSE_JWT_PRIVATE_KEY": generate_private_key_pem(),
    }
    with pytest.raises(ConfigError, match="exactly one of GATEHOUSE_JWT_PRIVATE_KEY"):
        load_settings(AuthSettings, both)
    with pytest.raises(ConfigError, match="exactly one of GATEHOUSE_JWT_PRIVATE_KEY"):
        load_settings(AuthSettings, BASE_ENV)
    folder_only = load_settings(AuthSettings, {**BASE_ENV, "GATEHOUSE_JWT_KEYS_DIR": str(tmp_path)})
    assert folder_only.jwt_private_key is None
