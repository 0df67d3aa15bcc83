"""What the project's locks say (requirements/*.txt, written by `make lock` with pip-compile).

Each lock pins packages as `name==version`, each with the sha256 hashes of its files and a
`# via` note naming what asked for it: an input (`gatehouse (pyproject.toml)`, `-r
requirements/runtime.in`) or another pinned package.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO_ROOT / "requirements"
PYPROJECT_SOURCE = "gatehouse (pyproject.toml)"


@dataclass(frozen=True)
class Pin:
    name: NormalizedName
    version: str
    hashes: frozenset[str]
    required_by: frozenset[str]


@dataclass(frozen=True)
class Lock:
    """One lock file and the inputs `make lock` compiles it from."""

    path: Path
    extras: tuple[str, ...]
    input_file: Path

    def pins(self) -> dict[NormalizedName, Pin]:
        return read_pins(self.path)

    def inputs(self) -> list[Requirement]:
        """pyproject.toml's dependencies (with this lock's extras) and the .in file's lines."""
        project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
        listed = list(project["dependencies"])
        for extra in self.extras:
            listed += project["optional-dependencies"][extra]
        return [Requirement(line) for line in listed] + list(requirements_in(self.input_file))


RUNTIME = Lock(REQUIREMENTS / "runtime.txt", (), REQUIREMENTS / "runtime.in")
DEV = Lock(REQUIREMENTS / "dev.txt", ("dev", "bench"), REQUIREMENTS / "dev.in")
LOCKS = (RUNTIME, DEV)


def requirements_in(path: Path) -> Iterator[Requirement]:
    """The requirements of a pip-compile input, following `-r`; `-c` constrains, it adds none."""
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-c"):
            continue
        if line.startswith("-r"):
            yield from requirements_in(path.parent / line.removeprefix("-r").strip())
        else:
            yield Requirement(line)


def read_pins(path: Path) -> dict[NormalizedName, Pin]:
    pins: dict[NormalizedName, Pin] = {}
    for entry in _entries(path.read_text()):
        name, _, version = entry.requirement.partition("==")
        canonical = canonicalize_name(name)
        if not version or canonical in pins:
            raise ValueError(f"{path.name}: {entry.requirement!r} is not one exact pin")
        pins[canonical] = Pin(canonical, version, entry.hashes, entry.required_by)
    return pins


@dataclass
class _Entry:
    requirement: str
    hashes: frozenset[str] = frozenset()
    required_by: frozenset[str] = frozenset()


def _entries(text: str) -> Iterator[_Entry]:
    """pip-compile's layout: `name==version \\`, `--hash=sha256:...` lines, then `# via`."""
    entry: _Entry | None = None
    for line in text.replace("\\\n", " ").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            if entry is not None:
                yield entry
            requirement, *options = line.split()
            hashes = {option.removeprefix("--hash=") for option in options}
            entry = _Entry(requirement, frozenset(hashes))
        elif entry is not None and line.lstrip().startswith("#") and line[:1].isspace():
            note = line.lstrip().removeprefix("#").strip()
            source = note.removeprefix("via").strip() if note.startswith("via") else note
            if source:
                entry.required_by |= {source}
    if entry is not None:
        yield entry
