"""The layers of the code (README, "Architecture"): contract, then foundation, then the two
tiers, which never import each other. The HTTP tier touches neither MySQL nor Redis, and only
its S3 blob store talks to S3."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parent.parent / "services"

# (package whose modules are checked, imported name it must not use, why)
FORBIDDEN = [
    ("http", "services.auth", "the tiers never import each other"),
    ("auth", "services.http", "the tiers never import each other"),
    ("foundation", "services.http", "the shared package sits below both tiers"),
    ("foundation", "services.auth", "the shared package sits below both tiers"),
    ("contract", "services.foundation", "the contract is the bottom layer"),
    ("contract", "services.http", "the contract is the bottom layer"),
    ("contract", "services.auth", "the contract is the bottom layer"),
    ("http", "aiomysql", "the HTTP tier never touches MySQL"),
    ("http", "pymysql", "the HTTP tier never touches MySQL"),
    ("http", "redis", "the HTTP tier never touches Redis"),
]
# Imported names allowed in one module only.
ONLY_IN = {"boto3": "http/avatars/blobstore_s3.py", "botocore": "http/avatars/blobstore_s3.py"}


def imported_names(path: Path, services: Path = SERVICES) -> Iterator[tuple[int, str]]:
    """Every module name `path` imports, with its line, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(services.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                yield node.lineno, f"{base}.{node.module}" if node.module else base
            elif node.module is not None:
                yield node.lineno, node.module


def is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(package: str, forbidden: str, services: Path = SERVICES) -> list[str]:
    found = []
    for path in sorted((services / package).rglob("*.py")):
        for line, name in imported_names(path, services):
            if is_within(name, forbidden):
                found.append(f"{path.relative_to(services)}:{line} imports {name}")
    return found


@pytest.mark.parametrize(("package", "forbidden", "why"), FORBIDDEN)
def test_no_import_crosses_the_layers(package: str, forbidden: str, why: str) -> None:
    assert violations(package, forbidden) == [], why


@pytest.mark.parametrize(("name", "allowed"), sorted(ONLY_IN.items()))
def test_a_client_library_is_imported_by_its_one_module(name: str, allowed: str) -> None:
    users = {
        str(path.relative_to(SERVICES))
        for path in SERVICES.rglob("*.py")
        for _, imported in imported_names(path)
        if is_within(imported, name)
    }
    assert users <= {allowed}


def test_the_check_sees_a_crossing_import(tmp_path: Path) -> None:
    """The scan itself: absolute, dotted and relative imports across the layers are found."""
    services = tmp_path / "services"
    (services / "http").mkdir(parents=True)
    (services / "http" / "probe.py").write_text(
        "from services.auth import tokens\nimport redis.asyncio\nfrom ..auth.tokens import X\n"
    )
    assert violations("http", "services.auth", services) == [
        "http/probe.py:1 imports services.auth",
        "http/probe.py:3 imports services.auth.tokens",
    ]
    assert violations("http", "redis", services) == ["http/probe.py:2 imports redis.asyncio"]


@pytest.mark.parametrize("errors_module", ["http/errors.py"])
def test_the_error_module_depends_on_no_module_of_its_tier(errors_module: str) -> None:
    """Every module may raise the tier's errors, so they may not pull in the RPC client or
    the blob stores: an import cycle waiting to happen."""
    tier = "services." + errors_module.split("/")[0]
    imports = [name for _, name in imported_names(SERVICES / errors_module)]
    assert [name for name in imports if is_within(name, tier)] == []
