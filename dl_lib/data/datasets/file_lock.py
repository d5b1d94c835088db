"""An exclusive inter-process lock on a file, for work done once on first use of a dataset
(generating the street scenes, converting labels to train ids) that several processes of a job
(ranks, data-loader workers, parallel test runs) may request at the same moment."""
import contextlib
import os
import shutil

__all__ = ["exclusive_lock", "replace_dir"]


@contextlib.contextmanager
def exclusive_lock(path: str):
    """Hold an exclusive ``flock`` on ``path`` (created if missing, never removed: removing it
    would let a waiting process lock a file that a newcomer no longer sees). Blocks until the
    lock is free. On systems without ``fcntl`` (Windows) this does not lock."""
    try:
        import fcntl
    except ImportError:  # non-POSIX: no locking
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def replace_dir(tmp: str, dst: str) -> None:
    """Move the complete folder ``tmp`` to ``dst`` (call it holding the lock), replacing an older
    ``dst``: the old one is first renamed aside, so ``dst`` is at every moment either the old
    folder or the new one, never a half-deleted mix."""
    if os.path.exists(dst):
        old = f"{dst}.old-{os.getpid()}"
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, dst)
