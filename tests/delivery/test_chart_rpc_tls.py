"""The chart's side of mutual TLS on the auth RPC (tls.rpc): on by default, the auth pods serve
with the server certificate and hold the operator's, the HTTP pods call with theirs, and the
certificates Helm generates are ones the services accept: a TLS handshake between them, with
the project's own contexts, yields the identities services/auth/roles.py authorizes."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from cryptography import x509

from services.auth.roles import HTTP, OPERATOR, Roles
from services.foundation.rpc.tls import TlsFiles, client_context, peer_identity, server_context
from tests.delivery.chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    Manifest,
    named,
    of_kind,
    pod_templates,
    render,
    render_release,
    run_helm,
)

SERVER_NAME = f"{RELEASE}-auth.gatehouse.svc"
TLS_DIR = "/etc/gatehouse/rpc-tls"
OPERATOR_DIR = "/etc/gatehouse/rpc-operator-tls"
SECRETS = {role: f"{RELEASE}-rpc-{role}-tls" for role in ("server", "http", "operator")}
PROBE = f"{RELEASE}-test-rpc-plaintext-refused"
TRUST_DOMAIN = f"{RELEASE}.{NAMESPACE}"
ROLES = Roles(TRUST_DOMAIN)
HTTP_IDENTITY = ROLES.identity(HTTP)
OPERATOR_IDENTITY = ROLES.identity(OPERATOR)


def _pod_spec(manifests: tuple[Manifest, ...], tier: str) -> dict[str, Any]:
    spec: dict[str, Any] = named(manifests, "Deployment", f"{RELEASE}-{tier}")["spec"]["template"][
        "spec"
    ]
    return spec


def _mounted_secrets(manifests: tuple[Manifest, ...], tier: str) -> dict[str, str]:
    """mount path -> Secret name in a tier's container; every mount is a whole directory."""
    spec = _pod_spec(manifests, tier)
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    (container,) = spec["containers"]
    mounts = container["volumeMounts"]
    assert not [mount for mount in mounts if "subPath" in mount]  # the kubelet updates these
    return {
        mount["mountPath"]: secrets[mount["name"]] for mount in mounts if mount["name"] in secrets
    }


def _config(manifests: tuple[Manifest, ...], tier: str) -> dict[str, str]:
    data: dict[str, str] = named(manifests, "ConfigMap", f"{RELEASE}-{tier}")["data"]
    return data


def _secret_names(manifests: tuple[Manifest, ...]) -> set[str]:
    return {secret["metadata"]["name"] for secret in of_kind(manifests, "Secret")}


def test_by_default_both_tiers_speak_mutual_tls_and_only_the_auth_pods_hold_the_operator() -> None:
    manifests = render(None)
    auth, http = _config(manifests, "auth"), _config(manifests, "http")
    for config in (auth, http):
        assert config["GATEHOUSE_RPC_TLS"] == "mtls"
        assert config["GATEHOUSE_RPC_TLS_CA"] == f"{TLS_DIR}/ca.crt"
        assert config["GATEHOUSE_RPC_TLS_CERT"] == f"{TLS_DIR}/tls.crt"
        assert config["GATEHOUSE_RPC_TLS_KEY"] == f"{TLS_DIR}/tls.key"
        assert config["GATEHOUSE_AUTH_TLS_SERVER_NAME"] == SERVER_NAME
        assert config["GATEHOUSE_RPC_TRUST_DOMAIN"] == TRUST_DOMAIN
    assert auth["GATEHOUSE_CLI_TLS_CERT"] == f"{OPERATOR_DIR}/tls.crt"
    assert auth["GATEHOUSE_CLI_TLS_KEY"] == f"{OPERATOR_DIR}/tls.key"
    assert not {"GATEHOUSE_CLI_TLS_CERT", "GATEHOUSE_CLI_TLS_KEY"} & set(http)

    auth_mounts = _mounted_secrets(manifests, "auth")
    assert auth_mounts[TLS_DIR] == SECRETS["server"]
    assert auth_mounts[OPERATOR_DIR] == SECRETS["operator"]
    http_mounts = _mounted_secrets(manifests, "http")
    assert http_mounts[TLS_DIR] == SECRETS["http"]
    # The operator's key is in no other pod of the release.
    for workload, template in pod_templates(manifests):
        volumes = template["spec"].get("volumes", [])
        holders = [
            v for v in volumes if v.get("secret", {}).get("secretName") == SECRETS["operator"]
        ]
        if workload["metadata"]["name"] != f"{RELEASE}-auth":
            assert not holders, workload["metadata"]["name"]


def _certificate(secret: Manifest, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _write(folder: Path, secret: Manifest) -> TlsFiles:
    folder.mkdir()
    files = TlsFiles(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    for path in (files.ca_path, files.cert_path, files.key_path):
        path.write_bytes(_certificate(secret, path.name))
    return files


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> dict[str, Any]:
    """A TLS handshake in memory between the two contexts, as a caller dials the auth Service
    by SERVER_NAME; the client certificate the server saw (getpeercert())."""
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server_end = server.wrap_bio(server_in, server_out, server_side=True)
    client_end = client.wrap_bio(client_in, client_out, server_hostname=SERVER_NAME)
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, end in (("client", client_end), ("server", server_end)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    peercert = server_end.getpeercert()
    assert peercert is not None
    return peercert


def test_generated_certificates_carry_the_server_name_and_the_identities(tmp_path: Path) -> None:
    manifests = render(None)
    secrets = {role: named(manifests, "Secret", name) for role, name in SECRETS.items()}
    ca = named(manifests, "Secret", f"{RELEASE}-rpc-ca")
    for secret in secrets.values():
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["data"]["ca.crt"] == ca["data"]["tls.crt"]
    server_leaf = x509.load_pem_x509_certificate(_certificate(secrets["server"], "tls.crt"))
    names = server_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert SERVER_NAME in names.get_values_for_type(x509.DNSName)

    files = {role: _write(tmp_path / role, secret) for role, secret in secrets.items()}
    server = server_context(files["server"])
    for role, identity in ((HTTP, HTTP_IDENTITY), (OPERATOR, OPERATOR_IDENTITY)):
        seen = peer_identity(_handshake(server, client_context(files[role])))
        assert seen == identity, role
        assert ROLES.role_of(seen) == role
    # genSignedCert marks every certificate for both server and client use: a client's must
    # still not pass for an auth replica (its names are not the server name), nor the server's
    # for a caller (it names no identity).
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_context(files["http"]), client_context(files["operator"]))
    assert peer_identity(_handshake(server, client_context(files["server"]))) is None


def test_the_generated_ca_is_kept_on_uninstall() -> None:
    ca = named(render(None), "Secret", f"{RELEASE}-rpc-ca")
    assert ca["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def _client_names(manifests: tuple[Manifest, ...], release: str) -> dict[str, list[str]]:
    """role -> the identity names its certificate carries: cert-manager's URI SANs, or the DNS
    SANs of the certificate Helm generated."""
    names: dict[str, list[str]] = {}
    for role in (HTTP, OPERATOR):
        secret_name = f"{release}-rpc-{role}-tls"
        certificates = [
            c for c in of_kind(manifests, "Certificate") if c["metadata"]["name"] == secret_name
        ]
        if certificates:
            names[role] = certificates[0]["spec"]["uris"]
        else:
            leaf = x509.load_pem_x509_certificate(
                _certificate(named(manifests, "Secret", secret_name), "tls.crt")
            )
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names[role] = sans.get_values_for_type(x509.DNSName)
    return names


CERT_MANAGER = ("tls.certManager.enabled=true", "tls.certManager.issuerRef.name=shared-ca")
EXISTING = (
    "tls.rpc.existingSecrets.server=mine-server",
    "tls.rpc.existingSecrets.http=mine-http",
    "tls.rpc.existingSecrets.operator=mine-operator",
)


@pytest.mark.parametrize(
    "mode", [(), CERT_MANAGER, EXISTING], ids=["helm", "cert-manager", "existing"]
)
def test_two_releases_in_two_namespaces_have_different_identities(mode: tuple[str, ...]) -> None:
    """gh-prod in prod and gh-staging in staging, from the same issuer: each release's tiers
    and certificates name its own trust domain, so neither's certificates pass in the other."""
    seen: dict[str, dict[str, list[str]]] = {}
    for release, namespace in (("gh-prod", "prod"), ("gh-staging", "staging")):
        manifests = render_release(release, namespace, *mode)
        domain = f"{release}.{namespace}"
        for tier in ("auth", "http"):
            config = named(manifests, "ConfigMap", f"{release}-{tier}")["data"]
            assert config["GATEHOUSE_RPC_TRUST_DOMAIN"] == domain, (release, tier)
        if mode == EXISTING:
            assert not of_kind(manifests, "Certificate")
            continue
        names = _client_names(manifests, release)
        roles = Roles(domain)
        for role, carried in names.items():
            (name,) = carried
            identity = (
                name
                if name.startswith("spiffe://")
                else peer_identity({"subjectAltName": (("DNS", name),)})
            )
            assert roles.role_of(identity) == role, (release, name)
        seen[release] = names
    if mode != EXISTING:
        for role in (HTTP, OPERATOR):
            assert seen["gh-prod"][role] != seen["gh-staging"][role], role


def test_the_trust_domain_value_overrides_the_release_s_own() -> None:
    manifests = render(None, "tls.rpc.trustDomain=payments.example", *CERT_MANAGER)
    for tier in ("auth", "http"):
        assert _config(manifests, tier)["GATEHOUSE_RPC_TRUST_DOMAIN"] == "payments.example"
    operator = named(manifests, "Certificate", SECRETS["operator"])["spec"]
    assert operator["uris"] == ["spiffe://payments.example/operator"]


def test_plaintext_renders_no_certificate_and_no_tls_setting() -> None:
    manifests = render(None, "tls.rpc.mode=plaintext")
    for tier in ("auth", "http"):
        config = _config(manifests, tier)
        assert config["GATEHOUSE_RPC_TLS"] == "plaintext"
        assert not [
            key for key in config if key.startswith(("GATEHOUSE_RPC_TLS_", "GATEHOUSE_CLI_TLS"))
        ]
        assert TLS_DIR not in _mounted_secrets(manifests, tier)
    assert not [name for name in _secret_names(manifests) if "-rpc-" in name]
    assert PROBE not in {pod["metadata"]["name"] for pod in of_kind(manifests, "Pod")}


def test_plaintext_gives_the_operator_a_socket_in_the_auth_container_s_own_tmp() -> None:
    manifests = render(None, "tls.rpc.mode=plaintext")
    socket = _config(manifests, "auth")["GATEHOUSE_OPERATOR_SOCKET"]
    assert "GATEHOUSE_OPERATOR_SOCKET" not in _config(manifests, "http")
    auth = named(manifests, "Deployment", f"{RELEASE}-auth")["spec"]["template"]["spec"]
    mounts = {mount["mountPath"]: mount["name"] for mount in auth["containers"][0]["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in auth["volumes"]}
    assert "emptyDir" in volumes[mounts[str(PurePosixPath(socket).parents[1])]]
    assert "GATEHOUSE_OPERATOR_SOCKET" not in _config(render(None), "auth")


def test_cert_manager_issues_the_three_certificates_with_uri_identities() -> None:
    manifests = render(
        None, "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=internal-ca"
    )
    assert not [name for name in _secret_names(manifests) if "-rpc-" in name]
    specs = {role: named(manifests, "Certificate", name)["spec"] for role, name in SECRETS.items()}
    for role, spec in specs.items():
        assert spec["secretName"] == SECRETS[role]
        assert spec["issuerRef"] == {
            "name": "internal-ca",
            "kind": "Issuer",
            "group": "cert-manager.io",
        }
    assert SERVER_NAME in specs["server"]["dnsNames"]
    assert "server auth" in specs["server"]["usages"] and "uris" not in specs["server"]
    assert specs["http"]["uris"] == [HTTP_IDENTITY]
    assert specs["operator"]["uris"] == [OPERATOR_IDENTITY]
    assert f"spiffe://{RELEASE}.{NAMESPACE}/operator" == OPERATOR_IDENTITY
    for role in ("http", "operator"):
        assert "client auth" in specs[role]["usages"] and "dnsNames" not in specs[role]
    assert _mounted_secrets(manifests, "http")[TLS_DIR] == SECRETS["http"]


def test_existing_secrets_are_mounted_and_nothing_is_generated() -> None:
    manifests = render(
        None,
        "tls.rpc.existingSecrets.server=mine-server",
        "tls.rpc.existingSecrets.http=mine-http",
        "tls.rpc.existingSecrets.operator=mine-operator",
        "tls.rpc.serverName=auth.internal.example",
    )
    assert not [name for name in _secret_names(manifests) if "-rpc-" in name]
    assert not of_kind(manifests, "Certificate")
    assert _mounted_secrets(manifests, "auth")[TLS_DIR] == "mine-server"
    assert _mounted_secrets(manifests, "auth")[OPERATOR_DIR] == "mine-operator"
    assert _mounted_secrets(manifests, "http")[TLS_DIR] == "mine-http"
    for tier in ("auth", "http"):
        assert _config(manifests, tier)["GATEHOUSE_AUTH_TLS_SERVER_NAME"] == "auth.internal.example"


def test_naming_only_some_existing_secrets_fails_with_what_to_fix() -> None:
    result = run_helm(
        "template", RELEASE, str(CHART), "--set", "tls.rpc.existingSecrets.server=mine"
    )
    assert result.returncode != 0
    assert "name all three Secrets (server, http, operator) or none" in result.stderr


def test_helm_test_checks_the_auth_port_refuses_plaintext_and_may_reach_it() -> None:
    manifests = render(None)
    probe = named(manifests, "Pod", PROBE)
    assert probe["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = probe["spec"]["containers"]
    assert container["image"].startswith("ghcr.io/gatehouse/gatehouse-auth:")
    script = (CHART / "files" / "rpc_plaintext_refused.py").read_text()
    assert container["command"] == ["python", "-c"]
    assert container["args"] == [script, SERVER_NAME, "7000"]
    assert container["resources"]["requests"]

    # The NetworkPolicies let it (and, as before, only the HTTP pods besides) reach the port.
    test_labels = probe["metadata"]["labels"]
    auth_ingress = named(manifests, "NetworkPolicy", f"{RELEASE}-auth")["spec"]["ingress"]
    rpc_rule = next(rule for rule in auth_ingress if rule["ports"][0]["port"] == 7000)
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in rpc_rule["from"]
    }
    assert components == {"http", test_labels["app.kubernetes.io/component"]}
    test_egress = named(manifests, "NetworkPolicy", f"{RELEASE}-test")["spec"]["egress"]
    assert any(
        rule["ports"][0]["port"] == 7000
        and rule["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "auth"
        for rule in test_egress
    )
