"""What ``tests/``, ``benchmarks/`` and ``scripts/`` share, so that neither imports the other: the tiny test model,
Label Studio's request bodies, the naive baseline, the soak loop, the quality benchmark's sampling and run
records. It imports ``backend`` and ``worker``, never ``tests`` or ``benchmarks`` (``make lint`` checks it)."""
