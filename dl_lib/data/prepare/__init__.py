"""Dataset preparation behind ``tools/prepare_<dataset>.py``: one module per dataset, each with
``prepare_<dataset>(...)`` (writes what the loaders read, checks it, returns the report rows)
and ``main(argv)``; shared checks in ``common``. See datasets/README.md."""
from dl_lib.data.prepare.common import PrepareError, check_split, parse_expect_counts

__all__ = ["PrepareError", "check_split", "parse_expect_counts"]
