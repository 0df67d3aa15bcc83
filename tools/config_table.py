"""Print the README's configuration tables from the settings classes: `python -m tools.config_table`.

The README must contain exactly this output (tests/tools/test_config_table.py checks it).
"""

from __future__ import annotations

from services.auth.settings import AuthSettings, RpcListenSettings
from services.cli.settings import CliSettings
from services.foundation.config import REQUIRED, describe
from services.http.settings import HttpSettings

# (title, settings class, a base class whose settings another section lists already)
SECTIONS: tuple[tuple[str, type, type | None], ...] = (
    ("Auth service", AuthSettings, None),
    ("HTTP tier", HttpSettings, None),
    ("The gatehouse command (besides the auth service's)", CliSettings, RpcListenSettings),
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
    for title, settings_class, listed_elsewhere in SECTIONS:
        lines += [f"#### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        shown_already = (
            {info.env for info in describe(listed_elsewhere)} if listed_elsewhere else set()
        )
        for info in describe(settings_class):
            if info.env in shown_already:
                continue
            secret = " (secret)" if info.secret else ""
            lines.append(f"| `{info.env}` | {_shown(info.default)} | {info.help}{secret} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
