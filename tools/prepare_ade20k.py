"""Prepare ade20k for dl_lib: see ``dl_lib/data/prepare/ade20k.py`` and datasets/README.md.

    python tools/prepare_ade20k.py --help
"""
import sys

from dl_lib.data.prepare.ade20k import main

if __name__ == "__main__":
    sys.exit(main())
