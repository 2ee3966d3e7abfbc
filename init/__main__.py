"""``python -m init``: the same as the ``imds-proxy-init`` console script."""

import sys

from init.cli import main

sys.exit(main())
