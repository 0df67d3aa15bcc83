"""The sessions API's own part, through the app to a stub auth replica: what it sends (a bounded
id), how it shows the answers, and its refusals."""

from __future__ import annotations

import pytest

from services.contract import auth_pb2 as pb
from services.http.session_api import export_filename
from services.http.session_calls import wire_session_id
from tests.http.gateway import Gateway
from tests.http.test_api import answer_with, error_of, only_call


def bearer(gateway: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.token(user_id=77, session_id='s-77')}"}


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("AbC-_09xyzAbC-_09xyz12", "AbC-_09xyzAbC-_09xyz12"),
        ("x" * 64, "x" * 64),
        ("x" * 65, ""),
        ("x" * 100_000, ""),
        ("a b", ""),
        ("ü", ""),
        ("", ""),
    ],
)
def test_only_what_can_be_a_session_id_is_sent(raw: str, sent: str) -> None:
    assert wire_session_id(raw) == sent


async def test_a_malformed_id_is_sent_as_empty_and_answered_like_an_unknown_one(
    gateway: Gateway,
) -> None:
    gateway.auth_server.handler = answer_with(
        pb.STATUS_NOT_FOUND, reason="session_not_found", message="no live session of yours"
    )
    answer = await gateway.client.delete("/api/v1/sessions/" + "y" * 5000, headers=bearer(gateway))
    assert error_of(answer) == (404, "session_not_found")
    request = pb.EndSessionRequest.FromString(only_call(gateway, pb.METHOD_END_SESSION).payload)
    assert request.id == ""
    assert (request.session.user_id, request.session.session_id) == (77, "s-77")


async def test_the_list_shows_unrecorded_fields_as_null(gateway: Gateway) -> None:
    listed = pb.ListSessionsReply(
        sessions=[
            pb.SessionInfo(
                id="abc",
                created_at_ms=1_700_000_000_000,
                expires_at_ms=1_700_086_400_000,
                current=True,
            )
        ]
    )
    gateway.auth_server.handler = answer_with(payload=listed.SerializeToString())
    answer = await gateway.client.get("/api/v1/sessions", headers=bearer(gateway))
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"  # addresses and devices
    assert answer.json() == {
        "sessions": [
            {
                "id": "abc",
                "created_at": "2023-11-14T22:13:20Z",
                "expires_at": "2023-11-15T22:13:20Z",
                "last_seen_at": None,
                "user_agent": None,
                "ip": None,
                "current": True,
            }
        ]
    }


def test_the_export_file_name_keeps_to_safe_characters() -> None:
    assert export_filename("alice.b-c_d") == "gatehouse-alice.b-c_d.json"
    assert export_filename('a"b\\c\r\n') == "gatehouse-a_b_c__.json"
