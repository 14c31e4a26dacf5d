"""``python -m bouquet`` runs the command line (same as the ``bouquet`` script)."""

import sys

from bouquet.app.cli import main

sys.exit(main())
