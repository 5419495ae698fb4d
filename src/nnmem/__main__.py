"""`python -m nnmem`: the same as the `nnmem` command."""

import sys

from nnmem.cli import main

sys.exit(main())
