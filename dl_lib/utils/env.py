"""Where things live: the repository, datasets and outputs (environment variables first)."""
import os

__all__ = ["repo_root", "datasets_root", "output_root"]


def repo_root() -> str:
    """The checkout that holds the ``dl_lib`` package (an editable install points here)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def datasets_root() -> str:
    """``$DL_DATASETS``, default ``<repo>/datasets``."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get("DL_DATASETS", os.path.join(repo_root(), "datasets"))))


def output_root() -> str:
    """``$DL_OUTPUT_ROOT``, default ``<repo>/output``."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get("DL_OUTPUT_ROOT", os.path.join(repo_root(), "output"))))
