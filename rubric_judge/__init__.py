"""The top layer: the ``rubric-judge`` command line (``rubric_judge.cli``), which imports both ``backend``
(what serves) and ``worker`` (what learns). Nothing in ``backend`` or ``worker`` imports this package."""
