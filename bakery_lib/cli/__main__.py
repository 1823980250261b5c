"""``python -m bakery_lib.cli``: the ``bakery`` command."""

import sys

from . import bakery_main

sys.exit(bakery_main())
