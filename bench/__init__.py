"""The benchmark of issue #8: the portal against the naive Keygen-tutorial integration.

Run it with `.venv/bin/python bench/run.py [--quick]`; bench/README.md explains the table.
"""
