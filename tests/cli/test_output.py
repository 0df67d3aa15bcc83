"""What the CLI prints of values users control: nothing that drives the operator's terminal."""

from __future__ import annotations

import argparse
import json

import pytest

from services.cli.output import show

HOSTILE = "Mozilla\x1b]0;owned\x07 \x9b31m\u202eevil\r\nx"


@pytest.mark.parametrize("as_json", [False, True])
def test_control_characters_in_values_are_printed_escaped(
    as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    show(argparse.Namespace(json=as_json), [f"USER AGENT  {HOSTILE}"], {"user_agent": HOSTILE})
    printed = capsys.readouterr().out
    assert not any(char in printed for char in "\x1b\x07\x9b\u202e\r")
    assert printed.count("\n") == (3 if as_json else 1)  # only the output's own line breaks
    if as_json:
        assert json.loads(printed)["user_agent"] == HOSTILE
    else:
        assert "\\u001b]0;owned\\u0007 \\u009b31m\\u202eevil\\r\\nx" in printed
