"""The fault drills behind `make drill`: each fault on a fresh local stack under mixed load,
every acknowledged write verified, one table per drill in drills/results/latest/report.md.

See drills/faults.py for the drills, drills/targets.py for the issue's targets.
"""
