"""Prepare pascal_context for dl_lib: see ``dl_lib/data/prepare/pascal_context.py`` and datasets/README.md.

    python tools/prepare_pascal_context.py --help
"""
import sys

from dl_lib.data.prepare.pascal_context import main

if __name__ == "__main__":
    sys.exit(main())
