"""`python -m dlsr_core.cli` works like `python -m dlsr_core`."""

import sys

from dlsr_core.cli.dispatch import main

if __name__ == "__main__":
    sys.exit(main())
