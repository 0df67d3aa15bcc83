from services.cli import run

raise SystemExit(run())
