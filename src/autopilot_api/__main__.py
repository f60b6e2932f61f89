"""`python -m autopilot_api …`: the same command line as the `autopilot-api` script."""

import sys

from autopilot_api.cli import main

sys.exit(main())
