"""`gatehouse`: the operator's command line (`[project.scripts]`), run where the auth service
runs (`kubectl exec deploy/<release>-auth -- gatehouse ...`, or `.venv/bin/gatehouse` locally)."""

from __future__ import annotations

import sys

from services.cli.errors import EXIT_FAILURE


def run() -> int:
    """The command's entry point. It imports the commands itself, which takes a noticeable
    moment (etcd's and gRPC's modules among them), so that a Ctrl-C meanwhile, or while the
    command line is parsed, ends the command as one during it does: one line, no traceback."""
    try:
        from services.cli.main import main

        return main()
    except KeyboardInterrupt:  # main() answers those during the command itself the same way
        print("gatehouse: interrupted", file=sys.stderr)
        return EXIT_FAILURE
