"""schemathesis against a live stack: every operation of /openapi.json, with data that fits
the document (positive) and data that does not (negative). Every answer must be one the
document lists (status, body, headers), and none a server error other than a documented 503.

Calls on one's own account get a fresh account and token per case: ending sessions or
deleting the account then spoils nothing for the next case, and a case whose body carries a
password of the account's rules gets an account with that password, so that the password
change and the deletion also succeed, not only fail. The fuzzer calls from a loopback address
of its own, so that the login throttle's counts of other tests' clients stay untouched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from requests.adapters import HTTPAdapter
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from devstack.gatehouse import Gatehouse
from services.auth.validation import InvalidField, validate_password
from tests.openapi.fuzz_report import FUZZ_PROPERTY, FuzzReport

FUZZER_ADDRESS = "127.0.0.61"
EXAMPLES_PER_MODE = 25
BUDGET_SECONDS = 90.0
ACCOUNT_PASSWORD = "password1"
PASSWORD_FIELDS = ("current_password", "password")
# Operations with a rule no JSON Schema states (a picture must decode; a nickname needs a
# visible character and no format characters; a new password's length counts its NFKC form):
# data that fits the document may still be refused with a documented 4xx, so "schema-valid
# data is accepted" cannot hold for them.
RULES_BEYOND_SCHEMA = frozenset(
    {
        "POST /api/v1/users",
        "POST /open_api/v1/register",
        "PATCH /api/v1/me",
        "PUT /api/v1/me/password",
        "PUT /api/v1/me/avatar",
    }
)


class SourceAddressAdapter(HTTPAdapter):
    def __init__(self, address: str) -> None:
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def fuzzer_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", SourceAddressAdapter(FUZZER_ADDRESS))
    return session


def account_password(body: object) -> str:
    """The password the case's body gives, when an account can have it."""
    if isinstance(body, dict):
        for name in PASSWORD_FIELDS:
            value = body.get(name)
            if isinstance(value, str) and value.isprintable():
                try:
                    validate_password(value)  # what a signup takes
                except InvalidField:
                    continue
                return value
    return ACCOUNT_PASSWORD


def fresh_token(http: requests.Session, base_url: str, password: str) -> str:
    credentials = {"username": f"fz{uuid.uuid4().hex[:16]}", "password": password}
    created = http.post(f"{base_url}/api/v1/users", json=credentials, timeout=10)
    assert created.status_code == 201, created.text
    login = http.post(f"{base_url}/api/v1/sessions", json=credentials, timeout=10)
    assert login.status_code == 200, login.text
    token: str = login.json()["token"]
    return token


def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    openapi_stack: Gatehouse, record_property: Callable[[str, object], None]
) -> None:
    base_url = openapi_stack.url()
    http = fuzzer_session()
    document = http.get(f"{base_url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    report = FuzzReport()
    started = time.monotonic()
    try:
        _fuzz(schema, document, http, base_url, report)
    finally:
        report.seconds = time.monotonic() - started
        record_property(FUZZ_PROPERTY, report.lines())

    assert report.failures == [], "\n".join(report.lines())
    assert all(report.cases[name] > 0 for name in report.operations), report.lines()


def _fuzz(
    schema: Any, document: Any, http: requests.Session, base_url: str, report: FuzzReport
) -> None:
    """Every operation in both modes, each within its share of the time budget."""
    operations = [result.ok() for result in schema.get_all_operations()]
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    # Each operation and mode gets its share of the budget: on a loaded machine the last
    # operations still get cases, and the run stays near the budget.
    share = BUDGET_SECONDS / (len(operations) * len(modes))

    def run(operation: Any, mode: GenerationMode) -> None:
        name = f"{operation.method.upper()} {operation.path}"
        deadline = time.monotonic() + share
        sent = 0
        secured = "security" in document["paths"][operation.path][operation.method.lower()]
        excluded = [positive_data_acceptance] if name in RULES_BEYOND_SCHEMA else []

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def send(case: Any) -> None:
            nonlocal sent
            if sent and time.monotonic() > deadline:
                report.unsent += 1
                return
            sent += 1
            headers = {}
            if secured:
                token = fresh_token(http, base_url, account_password(case.body))
                headers["Authorization"] = f"Bearer {token}"
            response = case.call(base_url=base_url, session=http, headers=headers, timeout=15)
            report.cases[name] += 1
            report.statuses[response.status_code] += 1
            try:
                case.validate_response(
                    response,
                    headers=headers,
                    excluded_checks=excluded,
                    transport_kwargs={"base_url": base_url, "session": http, "headers": headers},
                )
            except FailureGroup as group:
                for failure in group.exceptions:
                    # The whole request, so that a failure seen once (in CI) can be replayed.
                    report.failures.append(
                        f"{name} -> {response.status_code}: {failure.title}: "
                        f"{response.text[:160]} (body sent: {case.body!r:.2000}; request: "
                        f"{case.as_curl_command(base_url=base_url):.3000})"
                    )

        try:
            send()
        except hypothesis.errors.Unsatisfiable:
            # An operation without inputs has no data that breaks its schema.
            assert mode is GenerationMode.NEGATIVE, name

    for operation in operations:
        report.operations.append(f"{operation.method.upper()} {operation.path}")
        for mode in modes:
            run(operation, mode)
