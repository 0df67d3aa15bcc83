"""A log record is one line for every reader, whatever text a client put in it."""

from __future__ import annotations

import json
import logging

from services.foundation.logs import JsonLinesFormatter

# Line ends beyond "\n" and "\r": to str.splitlines(), and to some log shippers and editors.
OTHER_LINE_ENDS = "\u2028\u2029\x85\x1c\x1d\x1e\x0b\x0c"


def test_a_record_stays_one_line_whatever_the_message_holds() -> None:
    message = f"GET /p{OTHER_LINE_ENDS}\u009b31m{{'forged': 1}}/é"
    record = logging.LogRecord("test", logging.WARNING, __file__, 1, "%s", (message,), None)
    formatted = JsonLinesFormatter("test").format(record)
    assert len(formatted.splitlines()) == 1, formatted
    assert formatted.isascii()
    assert json.loads(formatted)["message"] == message
