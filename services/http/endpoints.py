"""What the JSON API and the web pages both serve from: the account calls, the caller's
session and identity, pictures, and the body limits. Both surfaces take the same parts, so
that an account action added to one is added to the other with the same dependencies."""

from __future__ import annotations

from services.http.account_calls import AccountCalls
from services.http.account_lifecycle import AccountLifecycle
from services.http.avatars.replace import Avatars
from services.http.callers import Callers
from services.http.session_calls import SessionCalls
from services.http.sessions import Sessions
from services.http.settings import HttpSettings


class AccountEndpoints:
    def __init__(
        self,
        accounts: AccountCalls,
        sessions: Sessions,
        avatars: Avatars,
        settings: HttpSettings,
        callers: Callers,
        lifecycle: AccountLifecycle,
    ) -> None:
        self._accounts = accounts
        self._own_sessions = SessionCalls(accounts.auth)
        self._lifecycle = lifecycle
        self._callers = callers
        self._sessions = sessions
        self._avatars = avatars
        self._max_body_bytes = settings.max_body_bytes
        self._max_avatar_bytes = settings.max_avatar_bytes
