"""Print the README's configuration tables from the settings classes: `python -m tools.config_table`.

The README must contain exactly this output (tests/tools/test_config_table.py checks it).
"""

from __future__ import annotations

from services.auth.settings import (
    AuthEtcdSettings,
    AuthSettings,
    BootstrapSettings,
    DatabaseSettings,
    EtcdBootstrapSettings,
    RpcListenSettings,
)
from services.cli.settings import CliSettings
from services.foundation.config import REQUIRED, SettingInfo, describe
from services.http.settings import HttpSettings


def _own(settings_class: type, base: type) -> list[SettingInfo]:
    """The settings `settings_class` reads besides those of `base`."""
    inherited = {info.env for info in describe(base)}
    return [info for info in describe(settings_class) if info.env not in inherited]


SECTIONS = (
    ("Auth service", describe(AuthSettings)),
    (
        "Database bootstrap (`python -m services.auth bootstrap`, besides the database settings"
        " above)",
        _own(BootstrapSettings, DatabaseSettings),
    ),
    (
        "etcd bootstrap (`python -m services.auth etcd-bootstrap`, besides the etcd settings"
        " above)",
        _own(EtcdBootstrapSettings, AuthEtcdSettings),
    ),
    ("HTTP tier", describe(HttpSettings)),
    ("The gatehouse command (besides the auth service's)", _own(CliSettings, RpcListenSettings)),
)


def _shown(default: object) -> str:
    if default is REQUIRED:
        return "**required**"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        default = ",".join(default)
    if default == "" or default is None:
        return "(empty)"
    return f"`{default}`"


def render() -> str:
    lines: list[str] = []
    for title, infos in SECTIONS:
        lines += [f"#### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        for info in infos:
            secret = ""
            if info.file_env is not None:
                secret = f" (secret; or a file: `{info.file_env}`)"
            elif info.secret:
                secret = " (secret)"
            lines.append(f"| `{info.env}` | {_shown(info.default)} | {info.help}{secret} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
