"""``python -m glasscockpit`` runs the command line."""

from __future__ import annotations

import sys

from glasscockpit.cli import main

sys.exit(main())
