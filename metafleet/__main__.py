"""`python -m metafleet ...` == `fleet ...`."""

import sys

from metafleet.cli import main

sys.exit(main())
