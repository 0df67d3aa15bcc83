"""The locks (requirements/runtime.txt, requirements/dev.txt) are current with pyproject.toml.

Offline and in well under a second: the locks are read as text, and the pinned packages' own
requirements come from the metadata of the packages `make venv` installed from the dev lock.
A stale lock fails here; `make lock` regenerates both.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from collections import deque

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tools.lockfile import DEV, LOCKS, PYPROJECT_SOURCE, REPO_ROOT, RUNTIME, Lock, Pin

STALE = "stale lock: run `make lock` (then `make venv`)"


def _applies(requirement: Requirement, extras: frozenset[str] = frozenset()) -> bool:
    """Whether the requirement holds on this interpreter (the one the locks are made for)."""
    if requirement.marker is None:
        return True
    return any(
        requirement.marker.evaluate({**default_environment(), "extra": extra})
        for extra in extras | {""}
    )


def _allows(requirement: Requirement, pin: Pin) -> bool:
    return requirement.specifier.contains(pin.version, prereleases=True)


def _lock_id(lock: Lock) -> str:
    return lock.path.name


@pytest.mark.parametrize("lock", LOCKS, ids=_lock_id)
def test_every_input_is_pinned_at_a_version_it_allows(lock: Lock) -> None:
    pins = lock.pins()
    problems = []
    for requirement in lock.inputs():
        pin = pins.get(canonicalize_name(requirement.name))
        if not _applies(requirement):
            continue
        if pin is None:
            problems.append(f"{requirement} is not pinned")
        elif not _allows(requirement, pin):
            problems.append(f"{requirement} but the lock pins {pin.version}")
    assert not problems, f"{lock.path.name}: {'; '.join(problems)}; {STALE}"


@pytest.mark.parametrize("lock", LOCKS, ids=_lock_id)
def test_nothing_is_pinned_as_an_input_that_no_input_asks_for(lock: Lock) -> None:
    """A dependency dropped from pyproject.toml leaves the lock too."""
    wanted = {canonicalize_name(requirement.name) for requirement in lock.inputs()}
    sources = {PYPROJECT_SOURCE, f"-r {lock.input_file.relative_to(REPO_ROOT)}"}
    sources |= {f"-r {path.relative_to(REPO_ROOT)}" for path in lock.input_file.parent.glob("*.in")}
    leftovers = [
        name
        for name, pin in lock.pins().items()
        if pin.required_by & sources and name not in wanted
    ]
    assert not leftovers, f"{lock.path.name} pins {leftovers} for no input; {STALE}"


@pytest.mark.parametrize("lock", LOCKS, ids=_lock_id)
def test_every_pin_is_exact_and_hashed(lock: Lock) -> None:
    pins = lock.pins()
    assert pins
    unhashed = [name for name, pin in pins.items() if not pin.hashes]
    assert not unhashed, f"{lock.path.name}: no --hash for {unhashed}"
    assert all(digest.startswith("sha256:") for pin in pins.values() for digest in pin.hashes)


def test_the_dev_lock_pins_the_runtime_lock_exactly() -> None:
    """The tests run the very files the images install."""
    dev = DEV.pins()
    differing = [
        name
        for name, pin in RUNTIME.pins().items()
        if name not in dev or (dev[name].version, dev[name].hashes) != (pin.version, pin.hashes)
    ]
    assert not differing, f"dev.txt differs from runtime.txt on {differing}; {STALE}"


def test_the_dev_lock_has_the_build_backend() -> None:
    """`make venv` installs the project without build isolation, with the locked backend."""
    pins = DEV.pins()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    for line in pyproject["build-system"]["requires"]:
        requirement = Requirement(line)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None and _allows(requirement, pin), f"{requirement}: {STALE}"


@pytest.mark.parametrize("lock", LOCKS, ids=_lock_id)
def test_the_lock_is_closed(lock: Lock) -> None:
    """Every pinned package's own requirements are pinned at a version they allow, and every pin
    is needed: the lock installs with --require-hashes and holds nothing left over. Each
    package's requirements are read from its installed metadata, which is the pinned version's
    (checked), so the venv must come from this tree's lock."""
    pins = lock.pins()
    problems: list[str] = []
    reached: set[NormalizedName] = set()
    queue = deque(
        (requirement, "an input") for requirement in lock.inputs() if _applies(requirement)
    )
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    while queue:
        requirement, wanted_by = queue.popleft()
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{wanted_by} needs {requirement}, which is not pinned")
            continue
        if not _allows(requirement, pin):
            problems.append(f"{wanted_by} needs {requirement}, the lock pins {pin.version}")
        reached.add(name)
        extras = frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        installed = importlib.metadata.version(name)
        assert installed == pin.version, (
            f"the venv has {name} {installed}, {lock.path.name} pins {pin.version}: run `make venv`"
        )
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            if _applies(dependency, extras):
                queue.append((dependency, f"{name} {pin.version}"))
    assert not problems, f"{lock.path.name}: {'; '.join(problems)}; {STALE}"
    unneeded = sorted(set(pins) - reached)
    assert not unneeded, f"{lock.path.name} pins {unneeded}, which nothing needs; {STALE}"
