"""The README's configuration tables list exactly what the config loader reads."""

from __future__ import annotations

from pathlib import Path

from tools.config_table import render

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_has_the_current_configuration_tables() -> None:
    assert render() in README.read_text(), (
        "README.md's configuration tables are out of date: paste the output of "
        "`python -m tools.config_table` into the Configuration section"
    )
