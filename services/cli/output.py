"""What a command prints on stdout: aligned human lines by default, one JSON document with
`--json`. Times are UTC, RFC 3339 in JSON (as the HTTP API gives them)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from services.contract import auth_pb2 as pb


def show(args: argparse.Namespace, human: Sequence[str], document: Mapping[str, Any]) -> None:
    if args.json:
        print(terminal_safe(json.dumps(document, indent=2, ensure_ascii=False), line_breaks=True))
    else:
        for line in human:
            print(terminal_safe(line))


def terminal_safe(text: str, *, line_breaks: bool = False) -> str:
    """`text` with every character that is not printable (escape sequences, C1 controls, line
    breaks unless `line_breaks`) written as its JSON escape: values come from users (a
    nickname, a User-Agent) and must not drive the operator's terminal."""
    return "".join(
        char if char.isprintable() or (line_breaks and char == "\n") else json.dumps(char)[1:-1]
        for char in text
    )


def fields(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """`name   value` lines, the values aligned."""
    width = max(len(name) for name, _ in pairs)
    return [f"{name.ljust(width)}  {value}" for name, value in pairs]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def count(number: int, noun: str) -> str:
    """How many of a noun: "1 session", "2 sessions"."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def rfc3339(epoch_ms: int) -> str | None:
    if not epoch_ms:
        return None
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def shown_time(epoch_ms: int, none: str = "never") -> str:
    """A time as a person reads it: "2026-12-03 22:40:01 UTC"."""
    text = rfc3339(epoch_ms)
    return none if text is None else text.replace("T", " ").replace("Z", " UTC")


def account_document(account: pb.AdminAccount) -> dict[str, Any]:
    user = account.user
    return {
        "id": str(user.id),
        "username": user.username,
        "nickname": user.nickname,
        "created_at": rfc3339(user.created_at_ms),
        "updated_at": rfc3339(user.updated_at_ms),
        "locked": account.locked_at_ms != 0,
        "locked_at": rfc3339(account.locked_at_ms),
        "live_sessions": account.live_sessions,
        "pepper_version": account.pepper_version,
        "avatar_key": user.avatar_key or None,
    }


def account_lines(account: pb.AdminAccount) -> list[str]:
    user = account.user
    locked = f"yes, since {shown_time(account.locked_at_ms)}" if account.locked_at_ms else "no"
    return fields(
        [
            ("username", user.username),
            ("id", str(user.id)),
            ("nickname", user.nickname),
            ("created", shown_time(user.created_at_ms)),
            ("updated", shown_time(user.updated_at_ms)),
            ("locked", locked),
            ("live sessions", str(account.live_sessions)),
            ("pepper version", str(account.pepper_version)),
            ("picture", user.avatar_key or "none"),
        ]
    )
