"""etcd with TLS and authentication, as the chart runs it: a throwaway CA, the bootstrap of
`python -m services.auth etcd-bootstrap`, and the variables each tier connects with."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from devstack.certs import CertificateAuthority
from devstack.etcd import Etcd

AUTH_USER = "gatehouse-auth"
HTTP_USER = "gatehouse-http"
BOOTSTRAP_TIMEOUT = 60.0
_CODE_ROOT = Path(__file__).resolve().parents[1]


class SecuredEtcd:
    """An `Etcd` in `state_dir` serving TLS only; `bootstrap()` turns its auth on."""

    def __init__(self, state_dir: Path, *, auth_token_ttl: int | None = None) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        certificate = CertificateAuthority(state_dir / "ca").issue("etcd")
        self.ca_path = certificate.ca_path
        self.etcd = Etcd(state_dir / "etcd", tls=certificate, auth_token_ttl=auth_token_ttl)
        self.password_files = {
            user: _password_file(state_dir / f"{user}.password")
            for user in ("root", AUTH_USER, HTTP_USER)
        }

    @property
    def endpoint(self) -> str:
        return self.etcd.endpoint

    def start(self) -> None:
        self.etcd.start()

    def stop(self) -> None:
        self.etcd.stop()

    def bootstrap_env(self) -> dict[str, str]:
        return {
            "GATEHOUSE_ETCD_ENDPOINTS": self.endpoint,
            "GATEHOUSE_ETCD_CA_FILE": str(self.ca_path),
            "GATEHOUSE_ETCD_ROOT_PASSWORD_FILE": str(self.password_files["root"]),
            "GATEHOUSE_ETCD_AUTH_USER": AUTH_USER,
            "GATEHOUSE_ETCD_AUTH_PASSWORD_FILE": str(self.password_files[AUTH_USER]),
            "GATEHOUSE_ETCD_HTTP_USER": HTTP_USER,
            "GATEHOUSE_ETCD_HTTP_PASSWORD_FILE": str(self.password_files[HTTP_USER]),
        }

    def bootstrap(self) -> None:
        """Run the bootstrap command as the chart's Job would; raise with its log if it fails."""
        environ = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME")}
        environ.update(self.bootstrap_env())
        result = subprocess.run(
            [sys.executable, "-m", "services.auth", "etcd-bootstrap"],
            env=environ,
            cwd=_CODE_ROOT,
            capture_output=True,
            text=True,
            timeout=BOOTSTRAP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcd-bootstrap exited {result.returncode}: {result.stderr}")

    def client_env(self, user: str) -> dict[str, str]:
        """What a process of the tier that `user` stands for connects with."""
        return {
            "GATEHOUSE_ETCD_ENDPOINTS": self.endpoint,
            "GATEHOUSE_ETCD_CA_FILE": str(self.ca_path),
            "GATEHOUSE_ETCD_USERNAME": user,
            "GATEHOUSE_ETCD_PASSWORD_FILE": str(self.password_files[user]),
        }


def _password_file(path: Path) -> Path:
    """A random password in `path`, kept if the file exists (a restarted stack keeps it)."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    return path
