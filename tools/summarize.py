"""One markdown table and one accuracy / cost plot of every evaluated playground of a group
(``dl_summarize``): see ``dl_lib/tools/summarize.py``.

    python tools/summarize.py playground/<Group> [--all] [--output DIR]
"""
import sys

from dl_lib.tools.summarize import main

if __name__ == "__main__":
    sys.exit(main())
