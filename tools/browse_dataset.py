"""Write a few augmented training samples of a playground as images (``dl_browse``): see
``dl_lib/tools/browse.py``.

    python tools/browse_dataset.py --playground playground/<Group>/<Name> [--num-samples 8]
"""
import sys

from dl_lib.tools.browse import main

if __name__ == "__main__":
    sys.exit(main())
