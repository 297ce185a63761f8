"""The pure core: rubrics, Label Studio configs, prompts, statistics, the pre-fill policy and the judge's answer
types. No torch, Flask, Redis or RQ (``make lint`` checks it with import-linter); mypy checks it."""
