"""Typed settings from environment variables: the one config loader of both tiers.

A settings class is a frozen dataclass whose fields are declared with `setting()`:

    @dataclass(frozen=True, kw_only=True)
    class ExampleSettings:
        port: int = setting("GATEHOUSE_EXAMPLE_PORT", 8000, "TCP port to listen on")

    settings = load_settings(ExampleSettings)

Values are converted by the field's annotation (str, int, float, bool, tuple[str, ...]) or by
a `parse` function, so a field holds what the code uses (a key object, a map, networks), never
text to be parsed later. Missing or malformed values, values outside their declared bounds and
failed checks in the class's `__post_init__` (`report_problems`, or a ValueError naming the
variable) raise one ConfigError listing every problem found in one pass (`problems`; its
message joins them on one line), so a process fails at start with a line that says what to fix
and `gatehouse config check` prints one line per problem. This is the only place that raises
ConfigError. Secrets are never shown, not even in the settings object's repr: a parser of a
secret raises InvalidSecret, whose message describes the problem without quoting the value.

A secret setting may instead be read from a file: `<VARIABLE>_FILE` names it (a mounted
Kubernetes Secret), so the value is in neither the pod spec nor the process's environment,
which every child process inherits. A class that declares `<VARIABLE>_FILE` itself (the etcd
password's, re-read at each connection) reads that file its own way.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SettingsT = TypeVar("SettingsT", bound="DataclassInstance")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


# Longest quoted value in an error message: a PEM or a long list stays readable on one line.
_MAX_SHOWN_CHARS = 80

SECRET_FILE_SUFFIX = "_FILE"
# A PEM key is under 1 KiB, a peppers list of many versions a few KiB: a larger file is not one
# secret value (or not a file meant for this), and is refused before it is read whole.
MAX_SECRET_FILE_BYTES = 64 * 1024


class ConfigError(ValueError):
    """Settings are missing or malformed: `problems`, one sentence each, naming the variable."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(_one_line(problem) for problem in problems)
        super().__init__("; ".join(self.problems))


class SettingsProblems(ValueError):
    """Raised by a settings class's `__post_init__` (`report_problems`): every check it failed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


class InvalidSecret(ValueError):
    """A secret setting is malformed; the message says how without quoting the value."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclasses.dataclass(frozen=True)
class Bounds:
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    choices: tuple[str, ...] | None = None

    def check(self, env: str, value: Any) -> None:
        """ValueError naming `env` when `value` is outside these bounds."""
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{env} must be one of {', '.join(self.choices)}")
        if self.at_least is not None and value < self.at_least:
            raise ValueError(f"{env} must be at least {_shown(self.at_least)}")
        if self.above is not None and value <= self.above:
            raise ValueError(f"{env} must be above {_shown(self.above)}")
        if self.at_most is not None and value > self.at_most:
            raise ValueError(f"{env} must be at most {_shown(self.at_most)}")


def _shown(limit: float) -> str:
    """An int bound in full (67108864, not 6.71089e+07), a float one short (0.01, not 0.01000)."""
    return str(limit) if isinstance(limit, int) else f"{limit:g}"


def bounds_problems(settings: Any) -> list[str]:
    """One sentence, naming the variable, for every field outside its declared bounds."""
    return [
        problem
        for field in dataclasses.fields(settings)
        if (problem := _bounds_problem(field, getattr(settings, field.name))) is not None
    ]


def check_bounds(settings: Any) -> None:
    """Raise SettingsProblems naming every field outside its declared bounds."""
    report_problems(bounds_problems(settings))


def report_problems(problems: Sequence[str]) -> None:
    """The end of a `__post_init__` that collected its failed checks: raise them all at once."""
    if problems:
        raise SettingsProblems(problems)


def _bounds_problem(field: dataclasses.Field[Any], value: Any) -> str | None:
    bounds = field.metadata.get("bounds")
    try:
        if bounds is not None:
            bounds.check(field.metadata["env"], value)
    except ValueError as exc:
        return str(exc)
    return None


def setting(
    env: str,
    default: Any = REQUIRED,
    help: str = "",
    *,
    secret: bool = False,
    parse: Callable[[str], Any] | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Declare a settings field read from the environment variable `env`, with the bounds its
    value must keep (checked by `check_bounds`, which each settings class calls first)."""
    if _is_number(default) and at_least is None and above is None:
        # Zero or a negative count, port or timeout starts a process that cannot work (a
        # heartbeat in a busy loop, every query past its deadline) instead of one config line.
        raise TypeError(f"{env}: declare the least value the number may take (at_least, above)")
    bounds = Bounds(at_least, above, at_most, choices)
    metadata = {"env": env, "help": help, "secret": secret, "parse": parse, "bounds": bounds}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata, repr=not secret)
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"{env}: use an immutable default (tuple, frozenset)")
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    env: str
    default: Any
    help: str
    secret: bool
    file_env: str | None  # the variable naming a file that may hold the value instead


def describe(settings_class: type) -> list[SettingInfo]:
    """The variables a settings class reads, for docs and for the chart contract tests."""
    fields = dataclasses.fields(settings_class)
    declared = {field.metadata["env"] for field in fields}
    infos = []
    for field in fields:
        default = REQUIRED if field.default is dataclasses.MISSING else field.default
        infos.append(
            SettingInfo(
                env=field.metadata["env"],
                default=default,
                help=field.metadata["help"],
                secret=field.metadata["secret"],
                file_env=_file_env(field, declared),
            )
        )
    return infos


def _file_env(field: dataclasses.Field[Any], declared: set[str]) -> str | None:
    """`<VARIABLE>_FILE` for a secret setting, unless the class declares that variable itself."""
    if not field.metadata["secret"]:
        return None
    name = field.metadata["env"] + SECRET_FILE_SUFFIX
    return None if name in declared else name


class _UnreadableSecret(ValueError):
    """A secret's variables are set wrongly or its file cannot be used; the message names them."""


def _raw_value(env: str, file_env: str | None, environ: Mapping[str, str]) -> str | None:
    """The text of a setting: its variable's, or its file's whole content. Nothing is stripped:
    a Kubernetes Secret's key gives the same value as a file as it gave as a variable (a CSRF
    key with a final line break stays the key every pod of a rolling upgrade uses); the parsers
    of DSNs, peppers and PEM keys ignore surrounding whitespace themselves."""
    raw = environ.get(env)
    path = None if file_env is None else environ.get(file_env)
    if path is None:
        return raw
    if raw is not None:
        raise _UnreadableSecret(f"set {env} or {file_env}, not both")
    if not path:
        raise _UnreadableSecret(f"{file_env} is empty: name the file that holds {env}")
    # A path is shown only if absolute: a secret pasted into the variable by mistake is not.
    named = (
        f"{file_env}={_shown_text(path)}"
        if path.startswith("/")
        else f"{file_env} (not an absolute path; not shown)"
    )
    try:
        # Non-blocking: a FIFO named by mistake fails the check below instead of hanging here.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise _UnreadableSecret(f"{named} is not a regular file")
            content = b""
            while len(content) <= MAX_SECRET_FILE_BYTES and (
                chunk := os.read(descriptor, MAX_SECRET_FILE_BYTES + 1 - len(content))
            ):
                content += chunk
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise _UnreadableSecret(f"{named} cannot be read: {exc.strerror}") from exc
    if len(content) > MAX_SECRET_FILE_BYTES:
        raise _UnreadableSecret(
            f"{named} holds more than {MAX_SECRET_FILE_BYTES} bytes: not one secret"
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _UnreadableSecret(f"{named} is not UTF-8 text") from exc


def load_settings(
    settings_class: type[SettingsT], environ: Mapping[str, str] | None = None
) -> SettingsT:
    """Build `settings_class` from `environ` (default: os.environ), or raise ConfigError with
    every problem: each value that is missing, malformed or outside its bounds, and, once every
    value converts, each check of the class's `__post_init__`."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(settings_class)
    fields = dataclasses.fields(settings_class)
    declared = {field.metadata["env"] for field in fields}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for field in fields:
        env = field.metadata["env"]
        file_env = _file_env(field, declared)
        try:
            raw = _raw_value(env, file_env, environ)
        except _UnreadableSecret as exc:
            problems.append(str(exc))
            continue
        if raw is None:
            if field.default is dataclasses.MISSING:
                either = "" if file_env is None else f" (or {file_env})"
                problems.append(f"{env} is required{either}: {field.metadata['help']}")
            continue
        converter = field.metadata["parse"] or _converter_for(hints[field.name])
        try:
            values[field.name] = converter(raw)
        except (TypeError, ValueError) as exc:
            from_file = file_env is not None and file_env in environ
            named = f"{env} (from {file_env})" if from_file else env
            problems.append(_problem(named, raw, exc, secret=field.metadata["secret"]))
            continue
        # Checked here too, so a bad bound is reported alongside a value that does not convert.
        if (bounds_problem := _bounds_problem(field, values[field.name])) is not None:
            problems.append(bounds_problem)
    if problems:
        raise ConfigError(problems)
    try:
        return settings_class(**values)
    except SettingsProblems as exc:
        raise ConfigError(exc.problems) from exc
    except (TypeError, ValueError) as exc:  # __post_init__ checks name their variables
        raise ConfigError([str(exc)]) from exc


def _problem(env: str, raw: str, exc: Exception, *, secret: bool) -> str:
    if isinstance(exc, InvalidSecret):
        return f"{env} is not valid: {exc}"
    if secret:  # any other converter's message may quote the value
        return f"{env} is not valid (value not shown: secret)"
    return f"{env}={_shown_text(raw)} is not valid: {exc}"


def _shown_text(raw: str) -> str:
    return repr(raw if len(raw) <= _MAX_SHOWN_CHARS else raw[:_MAX_SHOWN_CHARS] + "...")


def _one_line(message: str) -> str:
    return " ".join(message.split())


def parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of true/false, yes/no, on/off, 1/0")


def parse_csv(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def parse_prefix(raw: str) -> str:
    """An etcd key prefix: absolute and ending in '/'."""
    if not raw.startswith("/") or not raw.endswith("/"):
        raise ValueError("an etcd prefix starts and ends with '/'")
    return raw


def _parse_int(raw: str) -> int:
    return int(raw.strip())


def _parse_float(raw: str) -> float:
    value = float(raw.strip())
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("expected a finite number")
    return value


def _converter_for(annotation: Any) -> Callable[[str], Any]:
    if annotation is str:
        return str
    if annotation is bool:
        return parse_bool
    if annotation is int:
        return _parse_int
    if annotation is float:
        return _parse_float
    if typing.get_origin(annotation) is tuple and typing.get_args(annotation) == (str, ...):
        return parse_csv
    raise TypeError(f"no converter for {annotation!r}; pass parse= to setting()")
