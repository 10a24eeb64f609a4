"""`python -m edgevision ...` (also what `torchrun -m edgevision train ...` runs)."""

import sys

from edgevision.cli import main

sys.exit(main())
