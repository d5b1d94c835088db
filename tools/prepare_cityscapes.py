"""Prepare cityscapes for dl_lib: see ``dl_lib/data/prepare/cityscapes.py`` and datasets/README.md.

    python tools/prepare_cityscapes.py --help
"""
import sys

from dl_lib.data.prepare.cityscapes import main

if __name__ == "__main__":
    sys.exit(main())
