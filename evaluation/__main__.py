"""``python -m evaluation``: score a finished run (see ``evaluation/cli.py``)."""

import sys

from evaluation.cli import main

sys.exit(main())
