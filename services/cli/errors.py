"""The CLI's one error type and its exit codes."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and did not do what was asked
EXIT_USAGE = 2  # an unknown command or option, a missing argument, or a bad setting


class CommandFailed(Exception):
    """A command could not do what was asked: one line on stderr, exit `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    @property
    def lines(self) -> tuple[str, ...]:
        """What stderr shows, one line each."""
        return (self.message,)


class BadConfiguration(CommandFailed):
    """Settings the loader refused: one line per problem on stderr, exit 2."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems), EXIT_USAGE)
        self.problems = tuple(problems)

    @property
    def lines(self) -> tuple[str, ...]:
        return self.problems
