"""`python -m nomyo` runs the daemon."""

import sys

from .cli import main

sys.exit(main())
