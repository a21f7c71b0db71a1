"""``python -m ha`` is the ``lvs-ha`` command."""

import sys

from ha.cli import main

sys.exit(main())
