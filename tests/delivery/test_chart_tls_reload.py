"""The in-chart MySQL and Valkey serve a renewed or replaced certificate without a restart.

Both read their certificate files only at start (or on ALTER INSTANCE RELOAD TLS, CONFIG SET
tls-cert-file ...); cert-manager renews the Secret at day 60 of 90 and the kubelet updates the
mounted files in place. Without a reload the servers would present the old certificate until
it expires, and the auth pods and replication, which verify it, would fail. A `tls-reloader`
sidecar per server pod watches the files and has the server load them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.delivery.chart import CHART, RELEASE, Manifest, named, render

TLS_SECRET = f"{RELEASE}-data-stores-tls"
SERVERS = {
    # StatefulSet suffix: (server container, TLS mount path)
    "mysql-primary": ("mysql", "/etc/mysql-tls"),
    "mysql-replica": ("mysql", "/etc/mysql-tls"),
    "redis": ("redis", "/etc/valkey-tls"),
}
CERT_MANAGER = CHART / "ci" / "cert-manager-values.yaml"


def _pod(manifests: tuple[Manifest, ...], server: str) -> dict[str, Any]:
    pod: dict[str, Any] = named(manifests, "StatefulSet", f"{RELEASE}-{server}")["spec"][
        "template"
    ]["spec"]
    return pod


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == name]
    return container


def _secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> mount, of the mounts of the data stores' certificate Secret."""
    volumes = {
        v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == TLS_SECRET
    }
    return {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in volumes}


@pytest.mark.parametrize(
    "values_file", [None, CERT_MANAGER], ids=["helm-generated", "cert-manager"]
)
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_each_tls_server_has_a_reloader_watching_its_certificate_files(
    server: str, values_file: Path | None
) -> None:
    pod = _pod(render(values_file), server)
    name, tls_dir = SERVERS[server]
    main, reloader = _container(pod, name), _container(pod, "tls-reloader")

    # The server's files and the reloader's are the same Secret at the same path, mounted
    # whole: a subPath mount would never see the kubelet's update.
    for container in (main, reloader):
        mounts = _secret_mounts(pod, container)
        assert list(mounts) == [tls_dir], (container["name"], mounts)
        assert "subPath" not in mounts[tls_dir] and mounts[tls_dir].get("readOnly") is True
    # Same image: the client (mysql, valkey-cli) is the server's own.
    assert reloader["image"] == main["image"]
    assert reloader["imagePullPolicy"] == main["imagePullPolicy"]
    assert reloader["securityContext"] == main["securityContext"]
    security = reloader["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Bounded, and nothing for the kubelet to probe or route to.
    resources = reloader["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    assert not {"livenessProbe", "readinessProbe", "startupProbe", "ports"} & set(reloader)

    script = reloader["args"][0]
    assert reloader["command"][1:] == ["-c"] and len(reloader["args"]) == 1
    # It compares the content of all three files, not a timestamp, on a short period, and
    # stops at once on SIGTERM (the shell is PID 1).
    assert 'sha256sum "$dir/ca.crt" "$dir/tls.crt" "$dir/tls.key"' in script
    assert f"dir={tls_dir}\n" in script
    assert "sleep 10 &" in script and "wait $!" in script
    assert "trap 'exit 0' TERM" in script


@pytest.mark.parametrize("server", ["mysql-primary", "mysql-replica"])
def test_mysql_reloader_runs_alter_instance_reload_tls_over_the_socket(server: str) -> None:
    pod = _pod(render(None), server)
    main, reloader = _container(pod, "mysql"), _container(pod, "tls-reloader")
    script = reloader["args"][0]
    # Process substitution (the option file on a pipe) needs bash, which the image has.
    assert reloader["command"][0] == "bash"
    assert "-e 'ALTER INSTANCE RELOAD TLS'" in script
    assert "--protocol=socket --socket=/var/run/mysqld/mysqld.sock -uroot" in script
    # The password never shows in a command line or a file on disk.
    assert "--defaults-extra-file=<(printf" in script and '"$MYSQL_ROOT_PASSWORD"' in script
    env = {e["name"]: e for e in reloader["env"]}
    assert set(env) == {"MYSQL_ROOT_PASSWORD"}
    assert env["MYSQL_ROOT_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{RELEASE}-mysql", "key": "root-password"}
    }
    # The socket's directory is the server's own emptyDir.
    socket_volume = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}["/var/run/mysqld"]
    assert {m["mountPath"]: m["name"] for m in reloader["volumeMounts"]}[
        "/var/run/mysqld"
    ] == socket_volume
    # What the statement reloads: the files named by the server's own options.
    args = " ".join(main["args"])
    for option in ("--ssl-ca=/etc/mysql-tls/ca.crt", "--ssl-cert=/etc/mysql-tls/tls.crt",
                   "--ssl-key=/etc/mysql-tls/tls.key"):  # fmt: skip
        assert option in args


def test_valkey_reloader_sets_the_servers_own_tls_paths_again() -> None:
    pod = _pod(render(None, "redis.port=6380"), "redis")
    main, reloader = _container(pod, "redis"), _container(pod, "tls-reloader")
    script = reloader["args"][0]
    assert reloader["command"][0] == "sh"
    assert "valkey-cli --tls --insecure -h 127.0.0.1 -p 6380 CONFIG SET" in script
    # One CONFIG SET with all three, with the very paths the server was started with (the same
    # path set again reloads the file): certificate and key change together.
    args = main["args"]
    for option, key in (("--tls-cert-file", "tls.crt"), ("--tls-key-file", "tls.key"),
                        ("--tls-ca-cert-file", "ca.crt")):  # fmt: skip
        assert args[args.index(option) + 1] == f"/etc/valkey-tls/{key}"
        assert f'{option[2:]} "$dir/{key}"' in script
    assert '[ "$out" = OK ]' in script  # an error reply is a failure, retried
    env = {e["name"]: e for e in reloader["env"]}
    assert set(env) == {"REDISCLI_AUTH"}
    assert env["REDISCLI_AUTH"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{RELEASE}-redis", "key": "password"}
    }


def test_no_reloader_without_tls() -> None:
    manifests = render(None, "mysql.tls.enabled=false", "redis.tls.enabled=false")
    for server in SERVERS:
        names = [c["name"] for c in _pod(manifests, server)["containers"]]
        assert names == [SERVERS[server][0]], (server, names)
