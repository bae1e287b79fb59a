"""``python -m wsss`` runs the CLI."""

import sys

from wsss.cli import main

sys.exit(main())
