"""Redis URLs (`redis://`, `rediss://` for TLS, or `unix://` for a unix socket), checked by
the loader with redis-py's own parser so that a bad URL stops the process at start.

TLS options are redis-py's URL query parameters, all optional and valid with rediss:// only:
`ssl_ca_certs` (a PEM file of CA certificates; default the system's), `ssl_check_hostname`
(default true: the certificate must name the URL's host) and `ssl_cert_reqs` (`required`, the
default, or `none` to skip verification, which protects against passive listeners only).
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from redis.asyncio.connection import UnixDomainSocketConnection, parse_url

from services.foundation.config import InvalidSecret

TLS_OPTIONS = ("ssl_ca_certs", "ssl_check_hostname", "ssl_cert_reqs")
_CERT_REQS = ("required", "none")


_ENCODE_HINT = " (a password holding '/', '?', '#' or '@' must have them percent-encoded)"
# redis-py's refusal of a scheme it does not know.
_SCHEMES_MESSAGE = "Redis URL must specify one of the following schemes"


def checked_redis_url(raw: str) -> str:
    """`raw` without surrounding whitespace (a secret file's final line break) once redis-py
    parses it and its TLS options hold; errors never quote the URL (it may hold a password)."""
    raw = raw.strip()
    if _userinfo_split(raw):
        # Else the password's first part is read as the port, a path or an option name, and
        # the messages below (redis-py's, urllib's, ours) would quote it.
        raise InvalidSecret(
            "the Redis URL has an '@' after its host: a '/', '?' or '#' in the password ends "
            "the host part early; percent-encode them (%2F, %3F, %23, and '@' as %40)"
        )
    try:
        options = parse_url(raw)
    except ValueError as exc:
        # urllib's and redis-py's messages quote the part of the URL they could not read, which
        # may be the password's (urllib's NFKC check: "netloc ':pa\uff0fss@host' contains
        # ..."): none is passed on.
        message = str(exc)
        if message.startswith("Port could not be cast"):
            message = "the port of the Redis URL is not a number"
        elif not message.startswith(_SCHEMES_MESSAGE):  # which quotes nothing
            message = (
                "the Redis URL cannot be read: redis://[[user]:password@]host[:port][/db], "
                "rediss://... or unix:///path/redis.sock?db=N; percent-encode any character "
                "of the password that is not a letter or a digit"
            )
        raise InvalidSecret(message) from None
    if options.get("connection_class") is UnixDomainSocketConnection and not options.get("path"):
        raise InvalidSecret("a unix:// Redis URL names its socket: unix:///path/redis.sock?db=0")
    given = set(options) - {"username", "password", "host", "port", "db", "path"}
    given.discard("connection_class")
    unknown = given - set(TLS_OPTIONS)
    if unknown:
        # Not named: with a password cut by a '?', an option's name is part of the password.
        raise InvalidSecret(
            f"a Redis URL takes only the options {', '.join(TLS_OPTIONS)}; this one has "
            f"{len(unknown)} other{'s' if len(unknown) > 1 else ''}{_ENCODE_HINT}"
        )
    if given and not raw.startswith("rediss://"):
        raise InvalidSecret(f"{', '.join(sorted(given))}: TLS options need a rediss:// URL")
    cert_reqs = options.get("ssl_cert_reqs", "required")
    if cert_reqs not in _CERT_REQS:
        raise InvalidSecret(f"ssl_cert_reqs is one of {', '.join(_CERT_REQS)}")
    ca_file = options.get("ssl_ca_certs")
    if ca_file:
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            # The path not quoted: with a password cut by a '?', it may be the password's end.
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidSecret(
                f"ssl_ca_certs is not a readable PEM file of CA certificates ({reason})"
                f"{_ENCODE_HINT}"
            ) from None
    return raw


def _userinfo_split(raw: str) -> bool:
    """Whether the URL's user and password were cut short by a '/', '?' or '#' in them: its
    '@' is then in the path, query or fragment, and what precedes the cut reads as the host.

    An '@' in a fragment, or in a redis:// path (a db number), is always such a cut. A unix://
    socket's path may hold one, unless the host part looks like `user:password`
    (`unix://:Zk3p/9qLmW@/run/redis.sock`: the socket would be "/9qLmW@/run/..."). In the query
    an '@' may be a value's own (`?password=s3cr@t`, `ssl_ca_certs=/a@b.pem`): it is a cut only
    when the host part holds no '@' and is no `host:port`. What this lets through is caught by
    the checks after it, whose messages quote nothing of the URL either."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        return False  # parse_url refuses it
    if parts.scheme.lower() == "unix":
        return "@" in parts.fragment or ("@" in parts.path and ":" in parts.netloc)
    if "@" in parts.fragment or "@" in parts.path:
        return True
    if "@" not in parts.query or "@" in parts.netloc or parts.netloc.endswith("]"):
        return False
    host, colon, port = parts.netloc.rpartition(":")
    if bool(colon) and not (host and port.isdigit()):
        return True
    # `redis://user:2024?Spring@host`: the host part reads as host:port ("user:2024"), and
    # the '@' is in a query field without '=', which redis-py drops: the URL would be taken,
    # and every connection error would name "user:2024". An option's own '@' is in a value.
    return any("@" in field and "=" not in field for field in parts.query.split("&"))
