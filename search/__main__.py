"""`python -m search ...`: the project's command line, which lives in the `cli` package (`cli.main`)."""

import sys

from cli.main import main

sys.exit(main())
