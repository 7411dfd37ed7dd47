"""``python -m softnce ...`` (also under ``torchrun --nproc_per_node=K -m softnce train ...``)."""

import sys

from softnce.cli import main

if __name__ == "__main__":
    sys.exit(main())
