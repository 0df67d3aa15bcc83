"""Whether a coroutine gives its answer without suspending: a proof that it awaited nothing
(no read, no lock, no sleep), where a wall-clock bound would only suggest it."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest


def raises_on_first_step(
    call: Coroutine[Any, Any, Any], expected: type[BaseException], match: str | None = None
) -> None:
    """Drive `call` one step: it must raise `expected` there. A call that suspended instead
    fails the test and is closed, not left pending."""
    try:
        with pytest.raises(expected, match=match):
            call.send(None)
    finally:
        call.close()
