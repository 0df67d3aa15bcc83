"""Print the README's configuration tables from the settings classes: `python -m tools.config_table`.

The README must contain exactly this output (tests/tools/test_config_table.py checks it).
"""

from __future__ import annotations

from services.auth.settings import AuthSettings
from services.foundation.config import REQUIRED, describe
from services.http.settings import HttpSettings

SECTIONS = (("Auth service", AuthSettings), ("HTTP tier", HttpSettings))


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
    for title, settings_class in SECTIONS:
        lines += [f"#### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        for info in describe(settings_class):
            secret = " (secret)" if info.secret else ""
            lines.append(f"| `{info.env}` | {_shown(info.default)} | {info.help}{secret} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
