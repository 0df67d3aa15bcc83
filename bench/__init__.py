"""The load harness behind `make bench`: seeded stack, load generators, references, report.

See bench/__main__.py for the run, bench/suites.py for the scenarios.
"""
