"""Loss / learning-rate / mIoU curves from one or more metrics.json files (``dl_plot``): see
``dl_lib/tools/plot_logs.py``.

    python tools/plot_logs.py OUTPUT_DIR/metrics.json [more ...] [--keys total_loss lr '*mIoU']
"""
import sys

from dl_lib.tools.plot_logs import main

if __name__ == "__main__":
    sys.exit(main())
