"""`python -m momil.cli`: the same as the `momil` command."""

import sys

from momil.cli import main

sys.exit(main())
