"""`gatehouse sessions list NAME` and `gatehouse sessions revoke NAME (ID... | --all)`: an
account's live sessions, ended through the auth service's one revocation path."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli.errors import EXIT_OK, EXIT_USAGE, CommandFailed
from services.cli.options import common_options
from services.cli.output import count, rfc3339, show, shown_time, table
from services.cli.replica import account_call, replica_for, user_call
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb

# Ids that name no session, listed on the one line of the failure; the JSON lists them all.
_SHOWN_IDS = 10


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "sessions", help="list or end an account's sessions"
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    listing = commands.add_parser(
        "list", help="list an account's live sessions, newest first", parents=[common_options()]
    )
    listing.add_argument("username", metavar="NAME", help="the account's username")
    listing.set_defaults(run=_list)
    revoke = commands.add_parser(
        "revoke",
        help="end some sessions of an account (by id, as `list` shows them) or all of them",
        parents=[common_options()],
    )
    revoke.add_argument("username", metavar="NAME", help="the account's username")
    revoke.add_argument(
        "ids",
        metavar="ID",
        nargs="*",
        help="the sessions to end; when one starts with '-': [options] NAME -- ID...",
    )
    revoke.add_argument("--all", action="store_true", help="end every session of the account")
    revoke.set_defaults(run=_revoke)


def _session_document(session: pb.SessionInfo) -> dict[str, Any]:
    return {
        "id": session.id,
        "created_at": rfc3339(session.created_at_ms),
        "expires_at": rfc3339(session.expires_at_ms),
        "last_seen_at": rfc3339(session.last_seen_at_ms),
        "ip": session.ip or None,
        "user_agent": session.user_agent or None,
    }


async def _list(args: argparse.Namespace) -> int:
    async with replica_for(args) as replica:
        reply = await user_call(replica, methods.ADMIN_LIST_SESSIONS, args.username)
    rows = [
        [
            session.id,
            shown_time(session.created_at_ms),
            shown_time(session.expires_at_ms),
            shown_time(session.last_seen_at_ms),
            session.ip or "-",
            session.user_agent or "-",
        ]
        for session in reply.sessions
    ]
    human = (
        table(["ID", "CREATED", "EXPIRES", "LAST SEEN", "IP", "USER AGENT"], rows)
        if rows
        else [f"{args.username} has no live session"]
    )
    show(
        args,
        human,
        {
            "username": args.username,
            "sessions": [_session_document(session) for session in reply.sessions],
        },
    )
    return EXIT_OK


async def _revoke(args: argparse.Namespace) -> int:
    if args.all == bool(args.ids):
        raise CommandFailed(
            "name the sessions to end (IDs, as `gatehouse sessions list` shows them) or give "
            "--all, not both",
            EXIT_USAGE,
        )
    request = pb.AdminEndSessionsRequest(username=args.username, ids=args.ids, all=args.all)
    async with replica_for(args) as replica:
        reply = await account_call(replica, methods.ADMIN_END_SESSIONS, request, args.username)
    show(
        args,
        [f"ended {count(reply.ended, 'session')} of {args.username}"],
        {"username": args.username, "ended": reply.ended, "not_found": list(reply.not_found)},
    )
    if reply.not_found:
        shown = ", ".join(reply.not_found[:_SHOWN_IDS])
        more = len(reply.not_found) - _SHOWN_IDS
        raise CommandFailed(
            f"{len(reply.not_found)} of the ids name no live session of {args.username}: "
            f"{shown}{f' and {more} more' if more > 0 else ''}"
        )
    return EXIT_OK
