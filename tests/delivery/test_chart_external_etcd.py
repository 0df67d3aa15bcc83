"""An external etcd's users never send their passwords in plaintext by accident, and an etcd is
never used without users by accident: write access to etcd means writing the JWT public keys
the HTTP tier trusts, so forging session tokens."""

from __future__ import annotations

import pytest

from tests.delivery.chart import CHART, RELEASE, environment, named, render, run_helm

EXTERNAL = ("etcd.enabled=false", "external.etcd.endpoints={etcd.example:2379}")
USERS = {
    "auth": ("external.etcd.auth.username=gh-auth", "external.etcd.auth.password=auth pw"),
    "http": ("external.etcd.http.username=gh-http", "external.etcd.http.existingSecret=http-pw"),
}


def _template(*assignments: str) -> tuple[int, str]:
    args = ["template", RELEASE, str(CHART)]
    for assignment in assignments:
        args += ["--set", assignment]
    result = run_helm(*args)
    return result.returncode, result.stderr


@pytest.mark.parametrize("tier", sorted(USERS))
def test_etcd_users_without_a_ca_fail_the_render_with_what_to_do(tier: str) -> None:
    returncode, stderr = _template(*EXTERNAL, *USERS[tier])
    assert returncode != 0
    assert "external.etcd.caSecret" in stderr and "external.etcd.insecurePlaintext" in stderr, (
        stderr
    )


def _etcd_env(*assignments: str) -> dict[str, dict[str, object]]:
    manifests = render(None, *EXTERNAL, *USERS["auth"], *USERS["http"], *assignments)
    return {
        tier: environment(
            manifests,
            named(manifests, "Deployment", f"{RELEASE}-{tier}")["spec"]["template"]["spec"][
                "containers"
            ][0],
        )
        for tier in ("auth", "http")
    }


def test_etcd_users_with_a_ca_verify_etcd_over_tls() -> None:
    for tier, env in _etcd_env("external.etcd.caSecret=platform-etcd-ca").items():
        assert env["GATEHOUSE_ETCD_USERNAME"] == f"gh-{tier}"
        assert env["GATEHOUSE_ETCD_CA_FILE"] == "/etc/gatehouse/etcd-ca/ca.crt", tier


def test_plaintext_etcd_users_only_when_asked_for() -> None:
    for tier, env in _etcd_env("external.etcd.insecurePlaintext=true").items():
        assert env["GATEHOUSE_ETCD_USERNAME"] == f"gh-{tier}"
        assert "GATEHOUSE_ETCD_CA_FILE" not in env, tier


def test_an_etcd_without_users_fails_the_render_unless_accepted() -> None:
    """TLS or not, without users anything that reaches etcd may write the JWT public keys."""
    for ca in ((), ("external.etcd.caSecret=platform-etcd-ca",)):
        returncode, stderr = _template(*EXTERNAL, *ca)
        assert returncode != 0
        assert "external.etcd.insecureNoUsers" in stderr and "etcd-bootstrap" in stderr, stderr
        returncode, stderr = _template(*EXTERNAL, *USERS["auth"], *ca)  # one user is not enough
        assert returncode != 0, ca
    returncode, stderr = _template(*EXTERNAL, "external.etcd.insecureNoUsers=true")
    assert returncode == 0, stderr
