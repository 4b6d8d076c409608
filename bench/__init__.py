"""Benchmarks of botsessions: what the session layer costs per update.

``python -m bench.run`` (or ``bash scripts/bench.sh``) measures the demo bot with and
without sessions in-process, counts the statements an update sends, serves the webhook
over HTTP and checks that per-update cost does not grow with the number of stored
sessions. See bench/README.md.
"""
