"""`gatehouse`: the operator's command line (`[project.scripts]`), run where the auth service
runs (`kubectl exec deploy/<release>-auth -- gatehouse ...`, or `.venv/bin/gatehouse` locally)."""
