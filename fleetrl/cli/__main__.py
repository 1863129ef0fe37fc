"""``python -m fleetrl.cli``: the same command as the ``fleetrl`` console script."""

import sys

from fleetrl.cli.main import main

sys.exit(main())
