"""`python -m feeds` runs the command-line interface."""

import sys

from feeds.cli import main

sys.exit(main())
