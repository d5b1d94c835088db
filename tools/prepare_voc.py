"""Prepare voc for dl_lib: see ``dl_lib/data/prepare/voc.py`` and datasets/README.md.

    python tools/prepare_voc.py --help
"""
import sys

from dl_lib.data.prepare.voc import main

if __name__ == "__main__":
    sys.exit(main())
