"""Writing result files so that a reader (or a crash) never sees half of one."""
import contextlib
import os
from typing import IO, Iterator

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it over
    ``path`` (``os.replace``, atomic on a local file system).

    Inputs: ``path`` the final file (its folder must exist), ``mode`` ``"w"`` or ``"wb"``.
    Yields the open temporary file. If the body raises (or the process dies), ``path`` keeps its
    previous content (or stays absent) and the temporary file is removed (when still alive).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write({path!r}): mode must be 'w' or 'wb', not {mode!r}")
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.tmp.{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
