"""A private Docker daemon for the image tests, and the Debian base image they build on.

The daemon runs without a bridge or iptables rules (containers use the host network) with its
state under ~/.cache/gatehouse/docker, so image layers survive between runs and fresh clones.
A lock keeps two test runs from sharing that state at once.

The base image is Debian bookworm (minbase, python3, python3-venv) made by debootstrap from
Debian's own archive and `docker import`ed; its root filesystem is cached as a tarball keyed by
the recipe, so debootstrap runs once per recipe change. It trusts the certificate authorities
this machine trusts (its CA bundle replaces Debian's, and pip is pointed at it), so the image
builds can reach PyPI wherever this machine can.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devstack.ports import wait_until

CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gatehouse"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
DEBOOTSTRAP = ("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DAEMON_TIMEOUT = 60.0


def system_command(name: str) -> str:
    """A command that may live in /usr/sbin, which a non-root PATH lacks."""
    found = shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError(f"{name} not found: run scripts/install-system-deps.sh")
    return found


class Docker:
    """The docker client bound to the private daemon's socket."""

    def __init__(self, socket: Path) -> None:
        self.host = f"unix://{socket}"

    def run(
        self, *args: str, timeout: float = 900, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}
        result = subprocess.run(
            [system_command("docker"), *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args[:3])} ... failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def has_image(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0


@contextlib.contextmanager
def docker_daemon() -> Iterator[Docker]:
    """Start dockerd for the duration of the block, then stop it."""
    state = CACHE_DIR / "docker"
    state.mkdir(parents=True, exist_ok=True)
    with (state / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # exec-root holds sockets: a short path stays under the 108-byte socket path limit.
        with tempfile.TemporaryDirectory(prefix="gh-dockerd-") as run_dir:
            socket = Path(run_dir) / "docker.sock"
            log_path = state / "dockerd.log"
            with log_path.open("w") as log:
                daemon = subprocess.Popen(
                    [
                        system_command("dockerd"),
                        "--bridge=none",
                        "--iptables=false",
                        "--ip6tables=false",
                        "--data-root",
                        str(state / "data"),
                        "--exec-root",
                        f"{run_dir}/exec",
                        "--pidfile",
                        f"{run_dir}/dockerd.pid",
                        "--host",
                        f"unix://{socket}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            docker = Docker(socket)
            try:
                wait_until(
                    lambda: docker.run("version", timeout=10, check=False).returncode == 0,
                    DAEMON_TIMEOUT,
                    "dockerd answers",
                    where=log_path,
                    abort=lambda: (
                        None
                        if daemon.poll() is None
                        else f"dockerd exited with {daemon.returncode}"
                    ),
                )
                yield docker
            finally:
                daemon.terminate()
                try:
                    daemon.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
                _unmount_below(Path(run_dir))


def _unmount_below(folder: Path) -> None:
    """dockerd leaves its network namespace mount behind; the folder cannot go while it is there."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(f"{folder}/")]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def base_image(docker: Docker) -> str:
    """Tag of the Debian base image, imported from the cached root filesystem (made if missing)."""
    ca_bundle = HOST_CA_BUNDLE.read_bytes()
    recipe = hashlib.sha256(" ".join((*DEBOOTSTRAP, MIRROR)).encode() + ca_bundle).hexdigest()[:12]
    tag = f"gatehouse-test-base:{recipe}"
    if docker.has_image(tag):
        return tag
    tarball = CACHE_DIR / f"debian-{SUITE}-{recipe}.tar"
    if not tarball.exists():
        with tempfile.TemporaryDirectory(prefix="gh-rootfs-", dir=CACHE_DIR) as scratch:
            rootfs = Path(scratch) / "rootfs"
            result = subprocess.run(
                [system_command(DEBOOTSTRAP[0]), *DEBOOTSTRAP[1:], str(rootfs), MIRROR],
                check=False,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            if result.returncode != 0:
                raise AssertionError(
                    f"debootstrap failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
            (rootfs / IMAGE_CA_BUNDLE.lstrip("/")).write_bytes(ca_bundle)
            for package in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                package.unlink()
            partial = tarball.with_suffix(".partial")
            subprocess.run(
                ["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600
            )
            partial.rename(tarball)
    docker.run(
        "import",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        f"ENV PIP_CERT={IMAGE_CA_BUNDLE}",
        str(tarball),
        tag,
    )
    return tag
