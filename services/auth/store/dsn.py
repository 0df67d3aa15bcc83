"""MySQL DSNs (`mysql://user:password@host:port/database?ssl-mode=...&ssl-ca=...`): parsed, and
checked by the loader.

TLS options follow the MySQL client's `--ssl-mode` and `--ssl-ca` (names and meanings):

- `disabled` (the default without options): plaintext;
- `required`: TLS, the server's certificate not verified (protects against passive listeners
  only); the connection fails if the server does not offer TLS;
- `verify-ca`: TLS, the certificate must chain to `ssl-ca` (or the system's CAs without it);
- `verify-identity`: as `verify-ca`, and the certificate must name the DSN's host.

`ssl-ca` alone means `verify-ca`, as for the MySQL client. `preferred` (TLS when the server
offers it, else plaintext) is not supported: anyone on the path could strip the offer.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from services.foundation.config import InvalidSecret, parse_csv

SSL_MODES = ("disabled", "required", "verify-ca", "verify-identity")
_OPTIONS = ("ssl-mode", "ssl-ca")


@dataclass(frozen=True)
class MySQLAddress:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    ssl_mode: str = "disabled"
    ssl_ca: str = ""

    @property
    def label(self) -> str:
        """host:port, for logs and metric labels (never the credentials)."""
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of `ssl_mode`, None for plaintext. Raises ValueError when `ssl_ca`
        cannot be read or holds no certificate."""
        if self.ssl_mode == "disabled":
            return None
        if self.ssl_mode == "required":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            context = ssl.create_default_context(cafile=self.ssl_ca or None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"ssl-ca {self.ssl_ca!r} is not a readable PEM file of CA certificates: {exc}"
            ) from None
        context.check_hostname = self.ssl_mode == "verify-identity"
        return context


def parse_dsn(dsn: str) -> MySQLAddress:
    """Parse `mysql://user:password@host:port/database[?ssl-mode=...&ssl-ca=...]`
    (percent-encoded parts are decoded).

    Errors never repeat the DSN: it holds a password.
    """
    parts = urlsplit(dsn)
    if parts.scheme != "mysql":
        raise ValueError(f"a MySQL DSN starts with mysql://, not {parts.scheme or 'nothing'}://")
    try:
        port = parts.port or 3306
    except ValueError:
        raise ValueError("the port of the MySQL DSN is not a number between 0 and 65535") from None
    if parts.fragment:
        raise ValueError("a MySQL DSN takes no fragment (#...); remove it")
    database = unquote(parts.path.removeprefix("/"))
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise ValueError(
            "a MySQL DSN needs a user, a host and a database: mysql://user:password@host:port/database"
        )
    ssl_mode, ssl_ca = _tls_options(parts.query)
    return MySQLAddress(
        host=parts.hostname,
        port=port,
        user=unquote(parts.username),
        password=unquote(parts.password or ""),
        database=database,
        ssl_mode=ssl_mode,
        ssl_ca=ssl_ca,
    )


def _tls_options(query: str) -> tuple[str, str]:
    """(ssl mode, CA file) from a DSN's query string."""
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError("the options of a MySQL DSN are name=value pairs joined by '&'") from None
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"a MySQL DSN takes only the options {', '.join(_OPTIONS)}, not {', '.join(unknown)}"
        )
    if any(len(values) > 1 for values in options.values()):
        raise ValueError("each option of a MySQL DSN may appear once")
    ssl_ca = options.get("ssl-ca", [""])[0]
    raw_mode = options.get("ssl-mode", ["verify-ca" if ssl_ca else "disabled"])[0]
    ssl_mode = raw_mode.strip().lower().replace("_", "-")
    if ssl_mode not in SSL_MODES:
        raise ValueError(
            f"ssl-mode of a MySQL DSN is one of {', '.join(SSL_MODES)}, not {raw_mode!r}"
            + (" (it would fall back to plaintext)" if ssl_mode == "preferred" else "")
        )
    if ssl_ca and ssl_mode in ("disabled", "required"):
        raise ValueError(
            f"ssl-ca is used only by ssl-mode verify-ca or verify-identity, not {ssl_mode}"
        )
    return ssl_mode, ssl_ca


def checked_dsn(raw: str) -> str:
    """`raw` without surrounding whitespace (a secret file's final line break) once
    `parse_dsn` accepts it and its CA file loads, so a bad DSN stops the process at start."""
    dsn = raw.strip()
    try:
        parse_dsn(dsn).ssl_context()
    except ValueError as exc:  # parse_dsn's messages never quote the DSN
        raise InvalidSecret(str(exc)) from None
    return dsn


def checked_optional_dsn(raw: str) -> str:
    """Empty, or a DSN checked like `checked_dsn`."""
    return checked_dsn(raw) if raw.strip() else ""


def checked_dsns(raw: str) -> tuple[str, ...]:
    """Comma-separated DSNs, each checked like `checked_dsn`."""
    return tuple(checked_dsn(dsn) for dsn in parse_csv(raw))
