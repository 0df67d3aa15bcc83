"""The key folder (GATEHOUSE_JWT_KEYS_DIR): Ed25519 private keys in PEM, one per file.

The chart mounts a Secret there. Kubernetes updates such a volume by swapping a symlink
(`..data`) to a new hidden folder, so changes are found by comparing file contents on each
read, never by inode or mtime events; names starting with '.' are Kubernetes' own and skipped.
A bad file is reported by name, never by content: it holds a private key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.tokens import load_private_key
from services.foundation.config import InvalidSecret
from services.foundation.jwk import thumbprint_kid

# A rotation needs two keys at a time; the bounds only keep a wrong mount from costing much.
MAX_KEY_FILES = 32
MAX_KEY_FILE_BYTES = 16 * 1024


class KeyFolderError(ValueError):
    """The folder cannot be used as it is; the message names the folder or the file."""


@dataclass(frozen=True)
class FolderKey:
    file_name: str
    kid: str
    private_key: Ed25519PrivateKey


def key_id(private_key: Ed25519PrivateKey) -> str:
    """The key's id in tokens, records and the rotation state: its RFC 7638 thumbprint."""
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return thumbprint_kid(raw)


def folder_contents(folder: Path) -> dict[str, bytes]:
    """{file name: bytes} of every visible regular file in `folder`, within the bounds."""
    try:
        entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
        files = [entry for entry in entries if entry.is_file()]
    except OSError as exc:
        raise KeyFolderError(f"cannot list the key folder {folder}: {exc.strerror}") from None
    if len(files) > MAX_KEY_FILES:
        raise KeyFolderError(
            f"the key folder {folder} holds {len(files)} files; at most {MAX_KEY_FILES}:"
            " remove retired keys"
        )
    contents = {}
    for path in files:
        try:
            with path.open("rb") as file:
                data = file.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFolderError(f"cannot read key file {path}: {exc.strerror}") from None
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyFolderError(
                f"key file {path} is over {MAX_KEY_FILE_BYTES} bytes; it is not an Ed25519 PEM key"
            )
        contents[path.name] = data
    return contents


def parse_keys(folder: Path, contents: dict[str, bytes]) -> dict[str, FolderKey]:
    """{kid: key} of the files in `contents`; at least one."""
    if not contents:
        raise KeyFolderError(
            f"the key folder {folder} holds no key file; put an Ed25519 private key there"
            " (`openssl genpkey -algorithm ed25519`)"
        )
    keys: dict[str, FolderKey] = {}
    for name, data in contents.items():
        try:
            private_key = load_private_key(data.decode("ascii"))
        except (UnicodeDecodeError, InvalidSecret) as exc:
            problem = exc if isinstance(exc, InvalidSecret) else "not ASCII PEM"
            raise KeyFolderError(f"key file {folder / name} is not usable: {problem}") from None
        kid = key_id(private_key)
        keys.setdefault(kid, FolderKey(name, kid, private_key))  # a key in two files: the first
    return keys


def read_key_folder(folder: Path) -> dict[str, FolderKey]:
    """The keys in `folder`, or KeyFolderError saying which file is wrong."""
    return parse_keys(folder, folder_contents(folder))


def checked_key_folder(raw: str) -> str:
    """GATEHOUSE_JWT_KEYS_DIR: empty, or a folder holding only usable keys (checked at start)."""
    if raw:
        read_key_folder(Path(raw))
    return raw
