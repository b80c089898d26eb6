"""`python -m dlsr_core ...` (also under `torchrun -m dlsr_core train ...`)."""

import sys

from dlsr_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
