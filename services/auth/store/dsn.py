"""MySQL DSNs (`mysql://user:password@host:port/database`): parsed, and checked by the loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from services.foundation.config import InvalidSecret, parse_csv


@dataclass(frozen=True)
class MySQLAddress:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str

    @property
    def label(self) -> str:
        """host:port, for logs and metric labels (never the credentials)."""
        return f"{self.host}:{self.port}"


def parse_dsn(dsn: str) -> MySQLAddress:
    """Parse `mysql://user:password@host:port/database` (percent-encoded parts are decoded).

    Errors never repeat the DSN: it holds a password.
    """
    parts = urlsplit(dsn)
    if parts.scheme != "mysql":
        raise ValueError(f"a MySQL DSN starts with mysql://, not {parts.scheme or 'nothing'}://")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError("the port of the MySQL DSN is not a number between 0 and 65535") from None
    if parts.query or parts.fragment:
        raise ValueError("a MySQL DSN takes no options (?...) or fragment (#...); remove them")
    database = unquote(parts.path.removeprefix("/"))
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise ValueError(
            "a MySQL DSN needs a user, a host and a database: mysql://user:password@host:port/database"
        )
    return MySQLAddress(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        database=database,
    )


def checked_dsn(raw: str) -> str:
    """`raw` itself once `parse_dsn` accepts it, so a bad DSN stops the process at start."""
    try:
        parse_dsn(raw)
    except ValueError as exc:  # parse_dsn's messages never quote the DSN
        raise InvalidSecret(str(exc)) from None
    return raw


def checked_dsns(raw: str) -> tuple[str, ...]:
    """Comma-separated DSNs, each checked like `checked_dsn`."""
    return tuple(checked_dsn(dsn) for dsn in parse_csv(raw))
