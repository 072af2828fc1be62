"""``python -m analysis <sweeps> --out DIR``: every table and figure from run folders (analysis/command.py)."""

import sys

from .command import main

sys.exit(main())
