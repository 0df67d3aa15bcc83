"""The references Gatehouse is measured against, each served the way Gatehouse is.

`bare` is a Starlette endpoint with no work behind it (the server and framework ceiling);
`peer_app` is fastapi-users, the package a Python team would pick instead. The peer runs from
its own virtualenv (`venv.py`) so its dependencies never reach the project's.
"""
