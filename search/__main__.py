"""`python -m search ...` entry point."""

import sys

from search.cli import main

sys.exit(main())
