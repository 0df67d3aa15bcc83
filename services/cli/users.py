"""`gatehouse users show|lock|unlock|delete NAME`: an account, through the auth service's
operator calls (services/auth/admin_handlers.py)."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli.errors import EXIT_OK, CommandFailed
from services.cli.options import common_options
from services.cli.output import account_document, account_lines, count, show
from services.cli.replica import Replica, replica_for, user_call
from services.cli.settings import CliSettings, load_cli_settings
from services.contract import auth_methods as methods
from services.contract import auth_pb2 as pb
from services.contract.method import Method, ReplyT


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "users", help="show, lock, unlock or delete an account"
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    commands.required = True
    for name, run, summary in (
        ("show", _show, "show an account: its id, lock, live sessions, pepper version"),
        ("lock", _lock, "lock an account: its logins are refused and every session ends"),
        ("unlock", _unlock, "unlock a locked account"),
        ("delete", _delete, "delete an account as its owner would (sessions, profile, picture)"),
    ):
        command = commands.add_parser(name, help=summary, parents=[common_options()])
        command.add_argument("username", metavar="NAME", help="the account's username")
        command.set_defaults(run=run)


async def _call(args: argparse.Namespace, method: Method[pb.AdminUserRequest, ReplyT]) -> ReplyT:
    """One call about the account the command names, to the replica it names."""
    async with replica_for(args) as replica:
        return await user_call(replica, method, args.username)


async def _show(args: argparse.Namespace) -> int:
    reply = await _call(args, methods.ADMIN_SHOW_USER)
    show(args, account_lines(reply.account), account_document(reply.account))
    return EXIT_OK


async def _lock(args: argparse.Namespace) -> int:
    reply = await _call(args, methods.ADMIN_LOCK_USER)
    user = reply.account.user
    show(
        args,
        [
            f"locked {user.username} (id {user.id}): its logins are refused; "
            f"{count(reply.sessions_ended, 'live session')} ended"
        ],
        {"account": account_document(reply.account), "sessions_ended": reply.sessions_ended},
    )
    return EXIT_OK


async def _unlock(args: argparse.Namespace) -> int:
    reply = await _call(args, methods.ADMIN_UNLOCK_USER)
    user = reply.account.user
    show(
        args,
        [f"unlocked {user.username} (id {user.id}): it can log in again"],
        {"account": account_document(reply.account)},
    )
    return EXIT_OK


async def _delete(args: argparse.Namespace) -> int:
    blob_store = load_cli_settings(CliSettings).blob_store
    async with replica_for(args) as replica:
        account = (await user_call(replica, methods.ADMIN_SHOW_USER, args.username)).account
        reply = await user_call(replica, methods.ADMIN_DELETE_USER, args.username)
        picture = await _delete_picture(replica, account.user.id, reply, blob_store)
    user = account.user
    show(
        args,
        [
            f"deleted {user.username} (id {user.id}): every session ended, the profile erased",
            picture["said"],
        ],
        {
            "deleted": {"id": str(user.id), "username": user.username},
            "picture": {key: value for key, value in picture.items() if key != "said"},
        },
    )
    if "error" in picture:
        raise CommandFailed(f"the account is deleted, its picture is not: {picture['error']}")
    return EXIT_OK


async def _delete_picture(
    replica: Replica, user_id: int, reply: pb.DeleteAccountReply, blob_store: str
) -> dict[str, Any]:
    """What the HTTP tier does after DeleteAccount: the account's own uploaded picture is
    deleted from the blob store. Only the database store is reachable from here, and the
    deletion itself deleted the account's blobs there (`blobs_deleted`) unless the auth service
    predates that; then DeleteBlob, which such a service takes without a session."""
    key = reply.avatar_key
    if not key.startswith(f"{user_id}/"):  # none, or not an upload of this account
        return {"key": None, "deleted": False, "store": blob_store, "said": "no picture to delete"}
    if blob_store == "s3":
        return {
            "key": key,
            "deleted": False,
            "store": "s3",
            "said": f"picture {key} left in the S3 bucket: delete the object "
            f"<GATEHOUSE_S3_KEY_PREFIX>{key} there (the HTTP tier stops serving it within "
            "GATEHOUSE_PICTURE_CACHE_SECONDS once it is gone)",
        }
    if reply.blobs_deleted:
        return _database_picture_deleted(key)
    try:
        await replica.call(methods.DELETE_BLOB, pb.DeleteBlobRequest(key=key))
    except CommandFailed as exc:
        # The account is gone whatever happens here: say so, and what is left behind.
        return {
            "key": key,
            "deleted": False,
            "store": "database",
            "error": exc.message,
            "said": f"picture {key} NOT deleted: it stays stored, though nothing points at it",
        }
    return _database_picture_deleted(key)


def _database_picture_deleted(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "deleted": True,
        "store": "database",
        "said": f"picture {key} deleted from the database blob store (HTTP pods stop serving "
        "it within GATEHOUSE_PICTURE_CACHE_SECONDS)",
    }
