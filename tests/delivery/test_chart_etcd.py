"""The chart's side of etcd authentication and TLS: the in-chart etcd serves TLS only, to clients
and peers, with a certificate the tiers verify; a Job runs `etcd-bootstrap` with the only
copy of root's password; each tier is given its own etcd user and no other. The last test runs
the rendered Job, then the tiers' rendered settings, against a real etcd serving the rendered
certificate."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from devstack.certs import CertificateAuthority, IssuedCertificate
from devstack.ports import HOST, free_port, wait_until
from services.foundation.etcd import close_quietly, connect
from services.foundation.etcd_access import EtcdAccess
from services.http.client_ip import parse_trusted_proxies
from tests.delivery.certificates import covers, verifies
from tests.delivery.chart import (
    CHART,
    RELEASE,
    Manifest,
    environment,
    named,
    of_kind,
    pod_templates,
    render,
    render_release,
)
from tests.delivery.toolbox import REPO_ROOT

ETCD_TLS = f"{RELEASE}-etcd-tls"
CLIENT_CA = f"{RELEASE}-etcd-client-ca"
CLIENT_CERTS = {
    role: f"{RELEASE}-etcd-client-{role}" for role in ("auth", "http", "bootstrap", "etcdctl")
}
# The pods that mount each: the members' is for the runbooks' `kubectl exec ... etcdctl`.
CLIENT_CERT_READERS = {
    "auth": "auth",
    "http": "http",
    "bootstrap": "etcd-bootstrap",
    "etcdctl": "etcd",
}
OWN_PASSWORDS = {tier: f"{RELEASE}-etcd-{tier}-password" for tier in ("root", "auth", "http")}
EXTERNAL = CHART / "ci" / "external-values.yaml"
# An etcd of the operator's own, the rest of its values given per test.
EXTERNAL_ETCD = ("etcd.enabled=false", "external.etcd.endpoints={etcd.example:2379}")
# One Job per release revision; `helm template` renders revision 1.
BOOTSTRAP_JOB = f"{RELEASE}-etcd-bootstrap-1"
DISCOVERY = "/gatehouse/services/auth/"
BOOTSTRAP_TIMEOUT = 60
ETCD_START_TIMEOUT = 30

# Per value set: the user and password Secret of each tier, and the Secret holding etcd's CA.
TIERS = {
    "defaults": (
        None,
        {
            "auth": ("gatehouse-auth", OWN_PASSWORDS["auth"]),
            "http": ("gatehouse-http", OWN_PASSWORDS["http"]),
        },
        ETCD_TLS,
    ),
    "external": (
        EXTERNAL,
        {
            "auth": ("gatehouse-auth", "gatehouse-etcd-auth"),
            "http": ("gatehouse-http", "gatehouse-etcd-http"),
        },
        "gatehouse-etcd-ca",
    ),
}


def _pod(manifests: tuple[Manifest, ...], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = named(manifests, kind, name)["spec"]["template"]["spec"]
    return spec


def _tier_pods(
    manifests: tuple[Manifest, ...],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(tier, pod spec, first container's variables) of the auth and HTTP Deployments."""
    for tier in ("auth", "http"):
        pod = _pod(manifests, "Deployment", f"{RELEASE}-{tier}")
        yield tier, pod, environment(manifests, pod["containers"][0])


def _secret_files(pod: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) behind a file path in the pod's first container."""
    container = pod["containers"][0]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        folder = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        relative = path.removeprefix(folder)
        volume = volumes[mount["name"]]
        sources = (
            [source["secret"] for source in volume["projected"]["sources"]]
            if "projected" in volume
            else [{"name": volume["secret"]["secretName"], "items": volume["secret"]["items"]}]
        )
        for source in sources:
            for item in source["items"]:
                if item["path"] == relative:
                    return source["name"], item["key"]
    raise AssertionError(f"{path} is no file of a mounted Secret")


def _secrets_read_by(template: dict[str, Any]) -> set[str]:
    """Every Secret a pod can read: volumes (projected too), env and envFrom."""
    names = set()
    for volume in template["spec"].get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
        for variable in container.get("env", []):
            reference = variable.get("valueFrom", {}).get("secretKeyRef")
            if reference:
                names.add(reference["name"])
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                names.add(source["secretRef"]["name"])
    return names


def _rendered_secret(manifests: tuple[Manifest, ...], name: str) -> dict[str, bytes]:
    secret = named(manifests, "Secret", name)
    data = {key: base64.b64decode(value) for key, value in secret.get("data", {}).items()}
    data.update({key: value.encode() for key, value in secret.get("stringData", {}).items()})
    return data


def test_in_chart_etcd_serves_tls_only_to_clients_and_peers() -> None:
    manifests = render(None)
    etcd_pod = _pod(manifests, "StatefulSet", f"{RELEASE}-etcd")
    (container,) = etcd_pod["containers"]
    env = environment(manifests, container)
    for variable in (
        "ETCD_LISTEN_CLIENT_URLS",
        "ETCD_ADVERTISE_CLIENT_URLS",
        "ETCD_LISTEN_PEER_URLS",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    ):
        assert env[variable].startswith("https://"), variable
    peers = [member.split("=", 1)[1] for member in env["ETCD_INITIAL_CLUSTER"].split(",")]
    assert peers and all(peer.startswith("https://") for peer in peers)
    assert env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    # Clients show a certificate of the release's client CA: its certificate, not its key.
    assert env["ETCD_CLIENT_CERT_AUTH"] == "true"
    assert _secret_files(etcd_pod, env["ETCD_TRUSTED_CA_FILE"]) == (CLIENT_CA, "ca.crt")
    for variable, key in (
        ("ETCD_CERT_FILE", "tls.crt"),
        ("ETCD_KEY_FILE", "tls.key"),
        ("ETCD_PEER_CERT_FILE", "tls.crt"),
        ("ETCD_PEER_KEY_FILE", "tls.key"),
        ("ETCD_PEER_TRUSTED_CA_FILE", "ca.crt"),
    ):
        folder, _, file = env[variable].rpartition("/")
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        (volume,) = [v for v in etcd_pod["volumes"] if v["name"] == mount["name"]]
        assert (volume["secret"]["secretName"], file) == (ETCD_TLS, key), variable
    # The kubelet has no client certificate: its probes ask the plaintext metrics port.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics", probe
        assert container[probe]["httpGet"].get("scheme", "HTTP") == "HTTP", probe

    data = _rendered_secret(manifests, ETCD_TLS)
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    verifies(ca, leaf)
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in usages  # members are each other's clients
    auth_env = environment(
        manifests, _pod(manifests, "Deployment", f"{RELEASE}-auth")["containers"][0]
    )
    hosts = [
        endpoint.rpartition(":")[0] for endpoint in auth_env["GATEHOUSE_ETCD_ENDPOINTS"].split(",")
    ]
    hosts += [peer.removeprefix("https://").rpartition(":")[0] for peer in peers]
    for host in hosts:
        assert covers(leaf, host), host


@pytest.mark.parametrize("value_set", sorted(TIERS))
def test_each_tier_connects_as_its_own_etcd_user_and_root_stays_in_the_job(
    value_set: str,
) -> None:
    values_file, users, ca_secret = TIERS[value_set]
    manifests = render(values_file)
    for tier, (user, password_secret) in users.items():
        pod = _pod(manifests, "Deployment", f"{RELEASE}-{tier}")
        env = environment(manifests, pod["containers"][0])
        assert env["GATEHOUSE_ETCD_USERNAME"] == user, tier
        assert "GATEHOUSE_ETCD_PASSWORD" not in env, tier  # a file, never a variable
        assert _secret_files(pod, env["GATEHOUSE_ETCD_PASSWORD_FILE"]) == (
            password_secret,
            "password",
        )
        assert _secret_files(pod, env["GATEHOUSE_ETCD_CA_FILE"]) == (ca_secret, "ca.crt")
        if value_set == "defaults":
            for variable, key in (
                ("GATEHOUSE_ETCD_CERT_FILE", "tls.crt"),
                ("GATEHOUSE_ETCD_KEY_FILE", "tls.key"),
            ):
                assert _secret_files(pod, env[variable]) == (CLIENT_CERTS[tier], key), tier
        else:
            assert "GATEHOUSE_ETCD_CERT_FILE" not in env, tier

    readers: dict[str, set[str]] = {}
    for _, template in pod_templates(manifests):
        component = template["metadata"]["labels"]["app.kubernetes.io/component"]
        for secret in _secrets_read_by(template):
            readers.setdefault(secret, set()).add(component)
    bootstrap = {"etcd-bootstrap"} if value_set == "defaults" else set()
    assert readers[users["auth"][1]] == {"auth"} | bootstrap
    assert readers[users["http"][1]] == {"http"} | bootstrap
    if value_set == "defaults":
        assert readers[OWN_PASSWORDS["root"]] == {"etcd-bootstrap"}
        for role, secret in CLIENT_CERTS.items():
            assert readers[secret] == {CLIENT_CERT_READERS[role]}, role
        assert readers[CLIENT_CA] == {"etcd"}
    else:
        assert not of_kind(manifests, "Secret")  # every password is the operator's Secret
        assert BOOTSTRAP_JOB not in {j["metadata"]["name"] for j in of_kind(manifests, "Job")}


def test_the_bootstrap_job_runs_at_install_and_upgrade_with_the_tiers_users() -> None:
    manifests = render(None, "auth.extraEnv.GATEHOUSE_WORKER_ID_PREFIX=/ids/")
    job = named(manifests, "Job", BOOTSTRAP_JOB)
    # Not a hook: `helm install --wait` runs post-install hooks only once the pods are ready,
    # and they need this Job for that.
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["etcd-bootstrap"]
    env = environment(manifests, container)
    tiers = {
        tier: environment(
            manifests, _pod(manifests, "Deployment", f"{RELEASE}-{tier}")["containers"][0]
        )
        for tier in ("auth", "http")
    }
    assert env["GATEHOUSE_ETCD_AUTH_USER"] == tiers["auth"]["GATEHOUSE_ETCD_USERNAME"]
    assert env["GATEHOUSE_ETCD_HTTP_USER"] == tiers["http"]["GATEHOUSE_ETCD_USERNAME"]
    assert env["GATEHOUSE_ETCD_ENDPOINTS"] == tiers["auth"]["GATEHOUSE_ETCD_ENDPOINTS"]
    assert env["GATEHOUSE_ETCD_ENDPOINTS"] == tiers["http"]["GATEHOUSE_ETCD_ENDPOINTS"]
    assert env["GATEHOUSE_WORKER_ID_PREFIX"] == "/ids/"  # the auth role covers what auth uses
    # The release's own etcd: users and roles planted before auth was on are deleted.
    assert env["GATEHOUSE_ETCD_DEDICATED"] == "true"
    for variable, tier in (
        ("GATEHOUSE_ETCD_ROOT_PASSWORD_FILE", "root"),
        ("GATEHOUSE_ETCD_AUTH_PASSWORD_FILE", "auth"),
        ("GATEHOUSE_ETCD_HTTP_PASSWORD_FILE", "http"),
    ):
        assert _secret_files(pod, env[variable]) == (OWN_PASSWORDS[tier], "password")
    assert _secret_files(pod, env["GATEHOUSE_ETCD_CA_FILE"]) == (ETCD_TLS, "ca.crt")
    assert _secret_files(pod, env["GATEHOUSE_ETCD_CERT_FILE"]) == (
        CLIENT_CERTS["bootstrap"],
        "tls.crt",
    )
    assert _secret_files(pod, env["GATEHOUSE_ETCD_KEY_FILE"]) == (
        CLIENT_CERTS["bootstrap"],
        "tls.key",
    )


def test_the_client_certificates_come_from_a_ca_of_the_release_alone() -> None:
    """Whoever can have the client CA sign a certificate named `root` is etcd's root without
    its password (etcd takes the common name as the user of a call without a token): Helm
    makes the CA and keeps its key in a Secret, with cert-manager too (a namespace's CA Issuer
    signs for anyone allowed to create a Certificate there), and the leaves name no user."""
    for assignments in ((), CERT_MANAGER):
        manifests = render(None, *assignments)
        assert not of_kind(manifests, "Issuer")
        assert CLIENT_CA not in {c["metadata"]["name"] for c in of_kind(manifests, "Certificate")}
        ca_secret = named(manifests, "Secret", CLIENT_CA)
        assert ca_secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        ca = x509.load_pem_x509_certificate(_rendered_secret(manifests, CLIENT_CA)["tls.crt"])
        # Helm's other CAs (cert-manager's issuer signs etcd's own certificate there).
        other_cas = [] if assignments else [_rendered_secret(manifests, ETCD_TLS)["ca.crt"]]
        for role, secret in CLIENT_CERTS.items():
            leaf = x509.load_pem_x509_certificate(_rendered_secret(manifests, secret)["tls.crt"])
            verifies(ca, leaf)
            for other in other_cas:
                with pytest.raises(InvalidSignature):
                    verifies(x509.load_pem_x509_certificate(other), leaf)
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in usages, role
            (name,) = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            assert " " in str(name.value), role  # the schema allows no space in a user's name
        # etcd reads the CA when it starts: its digest in the pod template restarts the members.
        template = named(manifests, "StatefulSet", f"{RELEASE}-etcd")["spec"]["template"]
        assert template["metadata"]["annotations"]["checksum/etcd-client-ca"] == (
            hashlib.sha256(ca_secret["data"]["tls.crt"].encode()).hexdigest()
        )


def test_etcd_client_certificates_can_be_turned_off() -> None:
    manifests = render(None, "etcd.clientCertAuth=false")
    member = named(manifests, "StatefulSet", f"{RELEASE}-etcd")["spec"]["template"]
    (container,) = member["spec"]["containers"]
    # ETCD_TRUSTED_CA_FILE alone makes etcd ask for client certificates.
    assert not {"ETCD_CLIENT_CERT_AUTH", "ETCD_TRUSTED_CA_FILE"} & set(
        environment(manifests, container)
    )
    assert {v["name"] for v in member["spec"]["volumes"]} == {"tls"}
    assert "checksum/etcd-client-ca" not in member["metadata"].get("annotations", {})
    assert not {CLIENT_CA, *CLIENT_CERTS.values()} & {
        s["metadata"]["name"] for s in of_kind(manifests, "Secret")
    }
    job = named(manifests, "Job", BOOTSTRAP_JOB)["spec"]["template"]["spec"]["containers"][0]
    for _, _, env in [*_tier_pods(manifests), (None, None, environment(manifests, job))]:
        assert "GATEHOUSE_ETCD_CERT_FILE" not in env


def test_client_certificates_of_ones_own_replace_helms_and_come_all_or_none() -> None:
    """For a renderer without `lookup` (Argo CD), which would make a new CA at each render."""
    own = {role: f"own-etcd-client-{role}" for role in ("ca", *CLIENT_CERTS)}
    manifests = render(
        None, *(f"etcd.auth.existingClientCertSecrets.{role}={name}" for role, name in own.items())
    )
    assert not {CLIENT_CA, *CLIENT_CERTS.values()} & {
        s["metadata"]["name"] for s in of_kind(manifests, "Secret")
    }
    for tier, pod, env in _tier_pods(manifests):
        assert _secret_files(pod, env["GATEHOUSE_ETCD_CERT_FILE"]) == (own[tier], "tls.crt")
        assert _secret_files(pod, env["GATEHOUSE_ETCD_KEY_FILE"]) == (own[tier], "tls.key")
    job = named(manifests, "Job", BOOTSTRAP_JOB)["spec"]["template"]["spec"]
    job_env = environment(manifests, job["containers"][0])
    assert _secret_files(job, job_env["GATEHOUSE_ETCD_CERT_FILE"]) == (own["bootstrap"], "tls.crt")
    member = named(manifests, "StatefulSet", f"{RELEASE}-etcd")["spec"]["template"]
    env = environment(manifests, member["spec"]["containers"][0])
    assert _secret_files(member["spec"], env["ETCD_TRUSTED_CA_FILE"]) == (own["ca"], "ca.crt")
    volumes = {v["name"]: v for v in member["spec"]["volumes"]}
    assert volumes["etcdctl-client"]["secret"]["secretName"] == own["etcdctl"]
    # Nothing to take a digest of: replacing the CA needs the members restarted by hand.
    assert "checksum/etcd-client-ca" not in member["metadata"].get("annotations", {})
    with pytest.raises(AssertionError, match="names ca, http: name all five"):
        render(
            None,
            "etcd.auth.existingClientCertSecrets.ca=own-ca",
            "etcd.auth.existingClientCertSecrets.http=own-http",
        )


def test_external_etcd_users_from_plain_values_and_without_any() -> None:
    manifests = render(
        None,
        *EXTERNAL_ETCD,
        "external.etcd.caSecret=platform-etcd-ca",
        "external.etcd.auth.username=gh-auth",
        "external.etcd.auth.password=auth pw",
        "external.etcd.http.username=gh-http",
        "external.etcd.http.password=http pw",
    )
    assert _rendered_secret(manifests, OWN_PASSWORDS["auth"]) == {"password": b"auth pw"}
    assert _rendered_secret(manifests, OWN_PASSWORDS["http"]) == {"password": b"http pw"}
    assert OWN_PASSWORDS["root"] not in {
        s["metadata"]["name"] for s in of_kind(manifests, "Secret")
    }
    http = _pod(manifests, "Deployment", f"{RELEASE}-http")
    env = environment(manifests, http["containers"][0])
    assert env["GATEHOUSE_ETCD_USERNAME"] == "gh-http"
    assert _secret_files(http, env["GATEHOUSE_ETCD_PASSWORD_FILE"]) == (
        OWN_PASSWORDS["http"],
        "password",
    )
    assert _secret_files(http, env["GATEHOUSE_ETCD_CA_FILE"]) == ("platform-etcd-ca", "ca.crt")
    assert "GATEHOUSE_ETCD_CERT_FILE" not in env  # none asked for
    assert not of_kind(manifests, "Certificate")

    # Without a user or a CA: plaintext, no user, nothing mounted.
    manifests = render(
        None,
        *EXTERNAL_ETCD,
        "external.etcd.insecureNoUsers=true",
    )
    for tier, pod, env in _tier_pods(manifests):
        assert not {name for name in env if name.startswith("GATEHOUSE_ETCD_")} - {
            "GATEHOUSE_ETCD_ENDPOINTS"
        }, tier
        assert not {v["name"] for v in pod["volumes"]} & {"etcd-ca", "etcd-password"}, tier


def test_external_etcd_client_certificates_are_mounted_and_need_its_ca() -> None:
    manifests = render(
        None,
        *EXTERNAL_ETCD,
        "external.etcd.caSecret=platform-etcd-ca",
        "external.etcd.auth.username=gh-auth",
        "external.etcd.auth.existingSecret=gh-auth-password",
        "external.etcd.auth.clientCertSecret=gh-auth-etcd-client",
        "external.etcd.http.username=gh-http",
        "external.etcd.http.existingSecret=gh-http-password",
        "external.etcd.http.clientCertSecret=gh-http-etcd-client",
    )
    for tier, pod, env in _tier_pods(manifests):
        for variable, key in (
            ("GATEHOUSE_ETCD_CERT_FILE", "tls.crt"),
            ("GATEHOUSE_ETCD_KEY_FILE", "tls.key"),
        ):
            assert _secret_files(pod, env[variable]) == (f"gh-{tier}-etcd-client", key), tier
    with pytest.raises(AssertionError, match="clientCertSecret needs"):
        render(
            None,
            *EXTERNAL_ETCD,
            "external.etcd.insecurePlaintext=true",
            "external.etcd.auth.username=gh-auth",
            "external.etcd.auth.password=pw",
            "external.etcd.auth.clientCertSecret=gh-auth-etcd-client",
            "external.etcd.http.username=gh-http",
            "external.etcd.http.password=pw",
        )


def test_http_pods_are_told_the_auth_replica_cidrs() -> None:
    def cidrs(*assignments: str) -> str:
        config: str = named(render(None, *assignments), "ConfigMap", f"{RELEASE}-http")["data"][
            "GATEHOUSE_AUTH_REPLICA_CIDRS"
        ]
        return config

    assert cidrs() == ""  # any address
    narrowed = cidrs("http.authReplicaCidrs={10.244.0.0/16,fd00:10:244::/56}")
    assert [str(network) for network in parse_trusted_proxies(narrowed)] == [
        "10.244.0.0/16",
        "fd00:10:244::/56",
    ]


def _materialize(
    manifests: tuple[Manifest, ...], pod: dict[str, Any], folder: Path
) -> dict[str, str]:
    """The first container's literal variables, with the paths of mounted Secret files turned
    into files under `folder` holding what the rendered Secrets hold."""
    env = {
        name: value
        for name, value in environment(manifests, pod["containers"][0]).items()
        if isinstance(value, str)
    }
    for name, value in env.items():
        if name.endswith("_FILE"):
            secret, key = _secret_files(pod, value)
            path = folder / name
            path.write_bytes(_rendered_secret(manifests, secret)[key])
            path.chmod(0o600)
            env[name] = str(path)
    return env


async def _refused_to(client: aetcd.Client, key: bytes) -> bool:
    try:
        await client.put(key, b"x")
    except aetcd.exceptions.ClientError as exc:
        return "permission denied" in str(exc)
    return False


class RenderedEtcd:
    """A member started by `_start_rendered_etcd`: its process and URLs."""

    def __init__(self, process: subprocess.Popen[bytes], client: str, peer: str, metrics: str):
        self.process = process
        self.client = client
        self.peer = peer
        self.metrics = metrics

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def _start_rendered_etcd(
    manifests: tuple[Manifest, ...], folder: Path, tls: dict[str, bytes] | None = None
) -> RenderedEtcd:
    """One member run with the StatefulSet's own etcd variables and mounted Secret files (the
    `tls` given in place of its certificate's), its URLs moved to free loopback ports (the
    rendered certificate names 127.0.0.1 too), healthy as its readiness probe asks."""
    pod = _pod(manifests, "StatefulSet", f"{RELEASE}-etcd")
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    env = {
        name: value
        for name, value in environment(manifests, container).items()
        if isinstance(value, str)
    }
    for mount in container["volumeMounts"]:
        if mount["name"] not in volumes:
            continue  # the data volume, a claim template
        secret = volumes[mount["name"]]["secret"]
        files = _rendered_secret(manifests, secret["secretName"])
        if mount["name"] == "tls" and tls is not None:
            files = tls
        for item in secret.get("items", [{"key": key, "path": key} for key in files]):
            path = folder / mount["name"] / item["path"]
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(files[item["key"]])
            path.chmod(0o600)
        env = {
            name: value.replace(mount["mountPath"], str(folder / mount["name"]))
            for name, value in env.items()
        }
    client, peer = f"https://{HOST}:{free_port()}", f"https://{HOST}:{free_port()}"
    metrics = f"http://{HOST}:{free_port()}"
    env.update(
        ETCD_NAME="member-0",
        ETCD_DATA_DIR=str(folder / "data"),
        ETCD_LISTEN_CLIENT_URLS=client,
        ETCD_ADVERTISE_CLIENT_URLS=client,
        ETCD_LISTEN_PEER_URLS=peer,
        ETCD_INITIAL_ADVERTISE_PEER_URLS=peer,
        ETCD_INITIAL_CLUSTER=f"member-0={peer}",
        ETCD_LISTEN_METRICS_URLS=metrics,
        PATH=os.environ["PATH"],
    )
    # The image runs /usr/local/bin/etcd; here the etcd on PATH.
    with (folder / "etcd.log").open("wb") as log:
        process = subprocess.Popen(["etcd"], env=env, stdout=log, stderr=log)
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == "metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def healthy() -> bool:
        with opener.open(f"{metrics}{probe['path']}", timeout=2.0) as response:
            return bool(json.loads(response.read()).get("health") == "true")

    try:
        wait_until(
            healthy,
            ETCD_START_TIMEOUT,
            "etcd with the rendered settings",
            where=folder / "etcd.log",
        )
    except BaseException:
        process.terminate()
        process.wait(10)
        raise
    return RenderedEtcd(process, client, peer, metrics)


@pytest.fixture
def bootstrapped_etcd(tmp_path: Path) -> Iterator[str]:
    """The endpoint of an etcd run with the rendered settings and certificate, after the
    rendered Job's command ran in it twice (the hook runs again at every upgrade) with the Job's
    files and variables."""
    manifests = render(None)
    (tmp_path / "etcd").mkdir()
    etcd = _start_rendered_etcd(manifests, tmp_path / "etcd")
    endpoint = etcd.client.removeprefix("https://")
    try:
        job = named(manifests, "Job", BOOTSTRAP_JOB)["spec"]["template"]["spec"]
        (tmp_path / "job").mkdir()
        job_env = _materialize(manifests, job, tmp_path / "job")
        job_env["GATEHOUSE_ETCD_ENDPOINTS"] = endpoint
        job_env.update({key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ})
        for run in ("install", "upgrade"):
            result = subprocess.run(
                [sys.executable, "-m", "services.auth", *job["containers"][0]["args"]],
                env=job_env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=BOOTSTRAP_TIMEOUT,
                check=False,
            )
            assert result.returncode == 0, f"{run}: {result.stderr}"
        # Nothing was refused so far: not etcd's own gateway calling it with the members'
        # certificate, which the client CA did not sign (once a second while it ran).
        assert "rejected connection" not in (tmp_path / "etcd" / "etcd.log").read_text()
        yield endpoint
    finally:
        etcd.stop()


async def test_the_rendered_job_turns_on_auth_for_the_tiers_users(
    bootstrapped_etcd: str, tmp_path: Path
) -> None:
    manifests = render(None)
    endpoint = bootstrapped_etcd
    accesses: dict[str, EtcdAccess] = {}
    clients: dict[str, aetcd.Client] = {}
    for tier in ("auth", "http"):
        pod = _pod(manifests, "Deployment", f"{RELEASE}-{tier}")
        (tmp_path / tier).mkdir()
        env = _materialize(manifests, pod, tmp_path / tier)
        accesses[tier] = EtcdAccess(
            endpoints=(endpoint,),
            username=env["GATEHOUSE_ETCD_USERNAME"],
            password_file=env["GATEHOUSE_ETCD_PASSWORD_FILE"],
            ca_file=env["GATEHOUSE_ETCD_CA_FILE"],
            cert_file=env["GATEHOUSE_ETCD_CERT_FILE"],
            key_file=env["GATEHOUSE_ETCD_KEY_FILE"],
        )
        clients[tier] = connect(accesses[tier], 0)
    # The HTTP pods' certificate without their password; their password without a certificate.
    certificate_only = dataclasses.replace(accesses["http"], username="", password_file="")
    clients["certificate only"] = connect(certificate_only, 0)
    clients["password only"] = connect(
        dataclasses.replace(accesses["http"], cert_file="", key_file=""), 0
    )
    clients["runbooks"] = connect(_runbook_etcdctl(manifests, endpoint, tmp_path / "etcd"), 0)
    try:
        key = f"{DISCOVERY}replica-1".encode()
        await clients["auth"].put(key, b"{}")
        assert (await clients["http"].get(key)).value == b"{}"
        assert await _refused_to(clients["http"], key)
        with pytest.raises(aetcd.exceptions.ClientError, match="permission denied"):
            await clients["certificate only"].get(key)
        with pytest.raises(aetcd.exceptions.ConnectionFailedError):
            await clients["password only"].get(key)
        assert (await clients["runbooks"].get(key)).value == b"{}"
    finally:
        for client in clients.values():
            await close_quietly(client)


async def test_a_raised_nospace_alarm_fails_no_probe_of_the_members(tmp_path: Path) -> None:
    """NOSPACE refuses writes until an operator compacts and disarms it; restarting members
    cannot clear it (it is the cluster's, on disk). Counted by the probes, it failed all of
    them at once: every member restarted, over and over, and the quorum and the reads went."""
    manifests = render(None)
    (tmp_path / "etcd").mkdir()
    etcd = _start_rendered_etcd(manifests, tmp_path / "etcd")
    # Before the bootstrap: no user yet, the client certificate alone.
    access = dataclasses.replace(
        _runbook_etcdctl(manifests, etcd.client.removeprefix("https://"), tmp_path / "etcd"),
        username="",
        password="",
    )
    client = connect(access, 0)
    try:
        await client.create_alarm()
        assert [alarm async for alarm in client.list_alarms()]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with pytest.raises(urllib.error.HTTPError) as unhealthy:  # the premise
            opener.open(f"{etcd.metrics}/health", timeout=5.0)
        assert unhealthy.value.code == 503
        unhealthy.value.close()
        (container,) = _pod(manifests, "StatefulSet", f"{RELEASE}-etcd")["containers"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = container[probe]["httpGet"]["path"]
            with opener.open(f"{etcd.metrics}{path}", timeout=5.0) as response:
                assert response.status == 200, probe
    finally:
        await close_quietly(client)
        etcd.stop()


def _runbook_etcdctl(manifests: tuple[Manifest, ...], endpoint: str, member: Path) -> EtcdAccess:
    """What the runbooks' `kubectl exec <member> -- etcdctl --user root` connects with: the
    files at the paths they name, as `_start_rendered_etcd` wrote the member's mounts."""
    (container,) = _pod(manifests, "StatefulSet", f"{RELEASE}-etcd")["containers"]
    runbook = (REPO_ROOT / "docs" / "runbooks" / "GatehouseEtcdSpaceLow.md").read_text()

    def materialized(option: str) -> str:
        path = runbook.split(f"--{option}=", 1)[1].split()[0]
        folder, _, file = path.rpartition("/")
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        return str(member / mount["name"] / file)

    return EtcdAccess(
        endpoints=(endpoint,),
        username="root",
        password=_rendered_secret(manifests, OWN_PASSWORDS["root"])["password"].decode(),
        ca_file=materialized("cacert"),
        cert_file=materialized("cert"),
        key_file=materialized("key"),
    )


def _peer_members(peer: str, member: IssuedCertificate, certificate: IssuedCertificate) -> int:
    """The status of GET /members on etcd's peer port for a caller presenting `certificate`."""
    context = ssl.create_default_context(cafile=str(member.ca_path))
    context.load_cert_chain(str(certificate.cert_path), str(certificate.key_path))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(f"{peer}/members", timeout=5.0) as response:
        return int(response.status)


# A release and namespace whose Service names pass 64 bytes, cert-manager's bound on a CN.
LONG_NAMES = ("gatehouse-staging-blue", "identity-platform-staging-eu-west-1")
CERT_MANAGER = ("tls.certManager.enabled=true", "tls.certManager.issuerRef.name=release-ca")


def _allowed_peer_cn(manifests: tuple[Manifest, ...], release: str) -> str:
    etcd = named(manifests, "StatefulSet", f"{release}-etcd")["spec"]["template"]["spec"]
    (container,) = etcd["containers"]
    return str(environment(manifests, container)["ETCD_PEER_CERT_ALLOWED_CN"])


def test_long_names_get_certificates_cert_manager_accepts_and_etcd_peers_still_match() -> None:
    """cert-manager's webhook refuses a Certificate whose commonName passes 64 bytes, so the
    install failed for a release and namespace of 22 and 35 characters: no commonName past it
    (the clients check DNS names), and etcd's members a CN of their own that ETCD_PEER_CERT_
    ALLOWED_CN names. Helm's own certificates keep the full name (releases running with them)."""
    release, namespace = LONG_NAMES
    domain = f"{release}-etcd.{namespace}.svc"
    assert len(domain.encode()) > 64
    manifests = render_release(release, namespace, *CERT_MANAGER)
    certificates = {c["metadata"]["name"]: c["spec"] for c in of_kind(manifests, "Certificate")}
    assert len(certificates) == 5
    for name, spec in certificates.items():
        assert len(spec.get("commonName", "").encode()) <= 64, name
    member_cn = certificates[f"{release}-etcd-tls"]["commonName"]
    assert _allowed_peer_cn(manifests, release) == member_cn
    assert domain in certificates[f"{release}-etcd-tls"]["dnsNames"]
    # Other releases' members (another namespace) do not pass for this release's.
    elsewhere = render_release(release, f"{namespace}-2", *CERT_MANAGER)
    assert _allowed_peer_cn(elsewhere, release) != member_cn
    # Helm's certificates (genSignedCert with the same CN, kept by running releases): the
    # full name, as before.
    assert _allowed_peer_cn(render_release(release, namespace), release) == domain
    # Short names: the CN is the full name with cert-manager too.
    default = render(None, *CERT_MANAGER)
    assert named(default, "Certificate", ETCD_TLS)["spec"]["commonName"] == _allowed_peer_cn(
        default, RELEASE
    )


def test_etcd_takes_as_a_peer_only_a_members_certificate(tmp_path: Path) -> None:
    """With cert-manager one issuer signs every certificate of the release, the HTTP pods' RPC
    client certificate too (usage client auth): a peer certificate of the CA alone would let an
    HTTP pod speak raft to etcd's peer port, past its users and roles."""
    manifests = render(None)
    rendered = x509.load_pem_x509_certificate(_rendered_secret(manifests, ETCD_TLS)["tls.crt"])
    (member_name,) = rendered.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    issuer = CertificateAuthority(tmp_path / "issuer", name="one issuer for the release")
    member = issuer.issue(str(member_name.value), client=True)
    # As cert-manager issues it: a URI SAN only, so etcd finds no address in it to check.
    http = issuer.issue("http", hosts=(), client=True, uris=("spiffe://gatehouse/http",))
    (tmp_path / "etcd").mkdir()
    tls = {
        "ca.crt": member.ca_path.read_bytes(),
        "tls.crt": member.cert_path.read_bytes(),
        "tls.key": member.key_path.read_bytes(),
    }
    etcd = _start_rendered_etcd(manifests, tmp_path / "etcd", tls)
    try:
        assert _peer_members(etcd.peer, member, member) == 200
        with pytest.raises(OSError):
            _peer_members(etcd.peer, member, http)
    finally:
        etcd.stop()
