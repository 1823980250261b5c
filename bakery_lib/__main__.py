"""``python -m bakery_lib`` is the ``bakery`` command."""

import sys

from .cli import bakery_main

sys.exit(bakery_main())
