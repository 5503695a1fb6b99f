"""`python -m seer` (what torchrun launches) is the `seer` command."""

import sys

from seer.cli import main

sys.exit(main())
