"""``python -m rubric_judge``: the ``rubric-judge`` command."""

import sys

from rubric_judge.cli import main

sys.exit(main())
