"""The real-stack harness shared by ``tests/e2e`` and ``benchmarks/busy.py``: processes on free loopback ports
(``harness``), a Label Studio project wired to the backend and workers (``scenario``), the fixture tasks."""
