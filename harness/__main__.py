"""``python -m harness``: the same command line as the installed ``prompt-harness`` (harness/cli.py)."""

import sys

from harness.cli import main

sys.exit(main())
