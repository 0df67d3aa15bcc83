"""etcd with TLS and authentication, as the chart runs it: throwaway CAs (one for etcd's own
certificate, one for its clients'), the bootstrap of `python -m services.auth etcd-bootstrap`,
and the variables each tier connects with."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

from devstack.certs import CertificateAuthority
from devstack.etcd import Etcd
from services.foundation.etcd_access import EtcdAccess

AUTH_USER = "gatehouse-auth"
# The clients' certificate names no etcd user: without a password it is allowed nothing.
CLIENT_CERTIFICATE_NAME = "gatehouse-etcd-client"
HTTP_USER = "gatehouse-http"
# The etcd prefixes a stack uses, as the settings that name them: the tier users' grants.
PREFIX_SETTINGS: tuple[str, ...] = (
    "GATEHOUSE_DISCOVERY_PREFIX",
    "GATEHOUSE_WORKER_ID_PREFIX",
    "GATEHOUSE_JWT_KEYS_PREFIX",
    "GATEHOUSE_JWT_ROTATION_PREFIX",
)
DEFAULT_PREFIXES: tuple[str, ...] = (
    "/gatehouse/services/auth/",
    "/gatehouse/worker-ids/",
    "/gatehouse/jwt-keys/",
    "/gatehouse/keys/rotation/",
)
BOOTSTRAP_TIMEOUT = 60.0
# Runs of the bootstrap before its failure is taken for good (the chart's Job allows 7).
BOOTSTRAP_ATTEMPTS = 3
_CODE_ROOT = Path(__file__).resolve().parents[1]


class SecuredEtcd:
    """An `Etcd` in `state_dir` serving TLS only, to clients that show a certificate of its
    client CA (`client_certificate`, which every access below carries); `bootstrap()` turns its
    auth on."""

    def __init__(self, state_dir: Path, *, auth_token_ttl: int | None = None) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        certificate = CertificateAuthority(state_dir / "ca").issue("etcd")
        self.ca_path = certificate.ca_path
        self.client_certificate = CertificateAuthority(
            state_dir / "client-ca", name="Gatehouse devstack etcd client CA"
        ).issue(CLIENT_CERTIFICATE_NAME, client=True)
        self.etcd = Etcd(
            state_dir / "etcd",
            tls=certificate,
            client_certificate=self.client_certificate,
            auth_token_ttl=auth_token_ttl,
        )
        self.password_files = {
            user: _password_file(state_dir / f"{user}.password")
            for user in ("root", AUTH_USER, HTTP_USER)
        }
        self._users = {DEFAULT_PREFIXES: (AUTH_USER, HTTP_USER)}
        self._users_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return self.etcd.endpoint

    def start(self) -> None:
        self.etcd.start()

    def stop(self) -> None:
        self.etcd.stop()

    def tls_env(self) -> dict[str, str]:
        """The CA that verifies etcd, and the client certificate shown to it."""
        return {
            "GATEHOUSE_ETCD_CA_FILE": str(self.ca_path),
            "GATEHOUSE_ETCD_CERT_FILE": str(self.client_certificate.cert_path),
            "GATEHOUSE_ETCD_KEY_FILE": str(self.client_certificate.key_path),
        }

    def bootstrap_env(
        self,
        users: tuple[str, str] = (AUTH_USER, HTTP_USER),
        prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
    ) -> dict[str, str]:
        auth_user, http_user = users
        return {
            "GATEHOUSE_ETCD_ENDPOINTS": self.endpoint,
            **self.tls_env(),
            "GATEHOUSE_ETCD_ROOT_PASSWORD_FILE": str(self.password_files["root"]),
            "GATEHOUSE_ETCD_AUTH_USER": auth_user,
            "GATEHOUSE_ETCD_AUTH_PASSWORD_FILE": str(self.password_files[auth_user]),
            "GATEHOUSE_ETCD_HTTP_USER": http_user,
            "GATEHOUSE_ETCD_HTTP_PASSWORD_FILE": str(self.password_files[http_user]),
            **dict(zip(PREFIX_SETTINGS, prefixes, strict=True)),
        }

    def users_for(self, prefixes: tuple[str, ...]) -> tuple[str, str]:
        """(auth user, HTTP user) granted exactly `prefixes` (as PREFIX_SETTINGS orders them):
        the chart's users for the default prefixes, else a pair of their own, bootstrapped on
        first use, so a stack under prefixes of its own runs with least privilege too."""
        with self._users_lock:
            users = self._users.get(prefixes)
            if users is None:
                tag = hashlib.sha256("\n".join(prefixes).encode()).hexdigest()[:12]
                users = (f"{AUTH_USER}-{tag}", f"{HTTP_USER}-{tag}")
                for user in users:
                    self.password_files[user] = _password_file(self.state_dir / f"{user}.password")
                self.bootstrap(users, prefixes)
                self._users[prefixes] = users
            return users

    def bootstrap(
        self,
        users: tuple[str, str] = (AUTH_USER, HTTP_USER),
        prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
    ) -> None:
        """Run the bootstrap command as the chart's Job would, for `users` and `prefixes`, and
        again after a failure, as the Job's pods are (it is idempotent): on a loaded machine one
        of its etcd calls can overrun its 3 s deadline. Each run has BOOTSTRAP_TIMEOUT; raise
        with the last run's log once BOOTSTRAP_ATTEMPTS runs failed."""
        self.bootstrap_logged(users, prefixes)

    def bootstrap_logged(
        self,
        users: tuple[str, str] = (AUTH_USER, HTTP_USER),
        prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
        *,
        dedicated: bool = False,
    ) -> str:
        """`bootstrap`, returning the log of the run that succeeded. This etcd holds a pair of
        users per set of prefixes (users_for): only a test of the chart's own mode sets
        `dedicated`."""
        environ = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME")}
        environ.update(self.bootstrap_env(users, prefixes))
        if dedicated:
            environ["GATEHOUSE_ETCD_DEDICATED"] = "true"
        failure = ""
        for _ in range(BOOTSTRAP_ATTEMPTS):
            try:
                result = subprocess.run(
                    [sys.executable, "-m", "services.auth", "etcd-bootstrap"],
                    env=environ,
                    cwd=_CODE_ROOT,
                    capture_output=True,
                    text=True,
                    timeout=BOOTSTRAP_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                failure = f"etcd-bootstrap did not end within {BOOTSTRAP_TIMEOUT:g} s"
                continue
            if result.returncode == 0:
                return result.stderr
            failure = f"etcd-bootstrap exited {result.returncode}: {result.stderr}"
        raise RuntimeError(f"{failure} (run {BOOTSTRAP_ATTEMPTS} times)")

    def client_env(self, user: str) -> dict[str, str]:
        """What a process of the tier that `user` stands for connects with."""
        return {
            "GATEHOUSE_ETCD_ENDPOINTS": self.endpoint,
            **self.tls_env(),
            "GATEHOUSE_ETCD_USERNAME": user,
            "GATEHOUSE_ETCD_PASSWORD_FILE": str(self.password_files[user]),
        }

    def access(self, user: str = "root") -> EtcdAccess:
        """How a test or a tool connects as `user` (root sets things up; a tier's user shows
        what that tier may do)."""
        return EtcdAccess(
            endpoints=(self.endpoint,),
            username=user,
            password_file=str(self.password_files[user]),
            ca_file=str(self.ca_path),
            cert_file=str(self.client_certificate.cert_path),
            key_file=str(self.client_certificate.key_path),
        )

    def anonymous(self) -> EtcdAccess:
        """A client with the certificate but no user: what a caller without a password gets."""
        return EtcdAccess(
            endpoints=(self.endpoint,),
            ca_file=str(self.ca_path),
            cert_file=str(self.client_certificate.cert_path),
            key_file=str(self.client_certificate.key_path),
        )


def _password_file(path: Path) -> Path:
    """A random password in `path`, kept if the file exists (a restarted stack keeps it)."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return path
