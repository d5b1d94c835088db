"""Prepare camvid for dl_lib: see ``dl_lib/data/prepare/camvid.py`` and datasets/README.md.

    python tools/prepare_camvid.py --help
"""
import sys

from dl_lib.data.prepare.camvid import main

if __name__ == "__main__":
    sys.exit(main())
