"""`python -m fleet ...` == `fleet ...`."""

import sys

from fleet.cli import main

sys.exit(main())
