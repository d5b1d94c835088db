"""The output folder of a run: one job at a time, and no earlier run silently overwritten.

* :class:`RunLock`: an exclusive POSIX record lock (``lockf``) on ``<folder>/.lock`` held for a
  whole run by the process that owns the folder (``dl_train``: ``OUTPUT_DIR``; ``dl_test``: its
  inference folder). The file records who holds it (pid, host, command, start time) for the
  refusal message. The kernel drops the lock the moment its process dies, so a lock left by a
  killed run never blocks; unlike ``flock``, forked children (data-loader workers that outlive a
  killed parent by seconds) do not share it, so ``kill -9`` then ``--resume`` works at once.
* :func:`prepare_training_dir`: a new training run (no ``--resume``) refuses a folder holding an
  earlier run, unless ``--overwrite``, which moves that run aside into ``<folder>.old-<time>/``
  (nothing is deleted).
* :func:`save_run_config`: ``config.yaml`` of a new run, written once its config proved valid;
  a resume keeps it and records a changed config as ``config.resume-<iter>.yaml``.
"""
import datetime
import errno
import fnmatch
import logging
import os
import socket
import sys
from typing import List, Optional

import yaml

from dl_lib.utils.file_io import atomic_write

__all__ = ["RunDirError", "RunLockedError", "ExistingRunError", "RunLock", "existing_run_files",
           "prepare_training_dir", "move_run_aside", "save_run_config", "LOCK_NAME"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# Lock file -> holder record, for the locks this process holds. POSIX locks never conflict within
# one process, so a second RunLock on a folder in the same process is refused from here, before
# the file is opened again: closing any descriptor of the file would drop the process's lock.
_HELD_BY_THIS_PROCESS = {}
# What an earlier training run leaves that a new one would overwrite or append to.
_RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json", "results.json")


class RunDirError(RuntimeError):
    """The output folder cannot be used for this run (the message says why and what to do)."""


class RunLockedError(RunDirError):
    """Another live process holds the folder's lock."""


class ExistingRunError(RunDirError):
    """A new training run was asked for in a folder that holds an earlier one."""


class RunLock:
    """Exclusive, non-blocking lock of a run folder (a context manager; re-usable once released).

    ``RunLock(folder).acquire()`` creates ``folder`` and ``folder/.lock``, takes the lock
    and writes the holder's pid, host, command and start time into the file; raises
    ``RunLockedError`` naming the holder when a live process has it. ``release()`` empties the
    file and drops the lock. The file itself is never removed (a process waiting on a removed
    file would lock something a newcomer no longer sees). Without ``fcntl`` (Windows) it only
    records the holder.
    """

    def __init__(self, folder: str, what: str = "run"):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.what = what
        self._file = None

    def acquire(self) -> "RunLock":
        if self.path in _HELD_BY_THIS_PROCESS:
            raise RunLockedError(self._locked_message(_HELD_BY_THIS_PROCESS[self.path]))
        os.makedirs(self.folder, exist_ok=True)
        f = open(self.path, "a+")  # never truncate before holding the lock: it names the holder
        try:
            import fcntl
        except ImportError:  # non-POSIX: no locking
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    f.close()
                    raise
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise RunLockedError(self._locked_message(holder)) from None
        f.seek(0)
        f.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = (f"pid: {os.getpid()}\nhost: {socket.gethostname()}\n"
                  f"command: {' '.join(sys.argv)}\nstarted: {started}\n")
        f.write(record)
        f.flush()
        _HELD_BY_THIS_PROCESS[self.path] = record.strip()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        try:
            import fcntl

            fcntl.lockf(self._file, fcntl.LOCK_UN)
        except ImportError:
            pass
        _HELD_BY_THIS_PROCESS.pop(self.path, None)
        self._file.close()
        self._file = None

    def __enter__(self) -> "RunLock":
        return self if self._file is not None else self.acquire()  # may be taken beforehand

    def __exit__(self, *exc) -> None:
        self.release()

    def _locked_message(self, holder: str) -> str:
        info = dict(line.split(": ", 1) for line in holder.splitlines() if ": " in line)
        who = (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started "
               f"{info.get('started', '?')}, command: {info.get('command', '?')}"
               if info else "another process (it has not written its name yet)")
        return (f"{self.folder} is in use by another {self.what}: {who}. Two runs in one folder "
                "would interleave log.txt, metrics.json and checkpoints. Wait for it to finish "
                "(or stop it), or give this run its own OUTPUT_DIR "
                f"(`OUTPUT_DIR /another/folder`). Lock file: {self.path}")


def existing_run_files(output_dir: str) -> List[str]:
    """Names in ``output_dir`` that an earlier training run left (checkpoints, ``last_checkpoint``,
    ``metrics.json``, ``results.json``), sorted; [] when the folder is missing or fresh."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(n for n in os.listdir(output_dir)
                  if any(fnmatch.fnmatch(n, pattern) for pattern in _RUN_FILES))


def move_run_aside(output_dir: str) -> Optional[str]:
    """Move everything in ``output_dir`` except its lock file into a new sibling
    ``<output_dir>.old-<YYYYmmdd-HHMMSS>/``; returns that folder (None when there was nothing).

    Each entry is renamed (same file system: nothing is copied or deleted); the lock stays, so
    the process holding it keeps the folder for itself.
    """
    output_dir = os.path.abspath(output_dir)
    entries = [n for n in sorted(os.listdir(output_dir)) if n != LOCK_NAME]
    if not entries:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target, n = f"{output_dir}.old-{stamp}", 1
    while os.path.exists(target):  # two overwrites within a second
        target, n = f"{output_dir}.old-{stamp}-{n}", n + 1
    os.makedirs(target)
    for name in entries:
        os.rename(os.path.join(output_dir, name), os.path.join(target, name))
    _reopen_log_files_in(output_dir)
    return target


def _reopen_log_files_in(folder: str) -> None:
    """Point this process's log handlers writing into ``folder`` at fresh files of the same name.

    A run earlier in this process (tests, notebooks: ``main_train`` called twice) left handlers
    whose open files just moved with the old run; without this, the new run would log there.
    """
    from dl_lib.utils import logger as log_setup

    prefix = os.path.abspath(folder) + os.sep
    reopened, old_streams = {}, []
    loggers = [logging.getLogger()] + [logging.getLogger(n)
                                       for n in list(logging.Logger.manager.loggerDict)]
    for lg in loggers:
        for handler in getattr(lg, "handlers", []):
            name = getattr(getattr(handler, "stream", None), "name", None)
            if (isinstance(handler, logging.StreamHandler) and isinstance(name, str)
                    and os.path.abspath(name).startswith(prefix)):
                if name not in reopened:
                    reopened[name] = open(name, "a", buffering=1)
                old_streams.append(handler.setStream(reopened[name]))
    for stream in old_streams:  # after the loop: handlers share one stream per file
        if stream is not None:
            stream.close()
    if reopened:  # its cached streams are the closed ones
        log_setup._cached_log_stream.cache_clear()


def prepare_training_dir(output_dir: str, resume: bool, overwrite: bool,
                         prog: str = "dl_train") -> Optional[str]:
    """Check (call it holding the folder's :class:`RunLock`) that a training run may use
    ``output_dir``; returns where ``--overwrite`` moved the earlier run (None otherwise).

    ``resume``: the folder's run is continued, nothing to check. ``overwrite``: an earlier run is
    moved aside (:func:`move_run_aside`). Neither, and the folder holds an earlier run: raises
    ``ExistingRunError`` naming the folder, what is in it and both ways out.
    """
    if resume and overwrite:
        raise ExistingRunError("--resume continues the run in OUTPUT_DIR and --overwrite moves it "
                               "aside to start a new one: give one of them.")
    if resume:
        return None
    found = existing_run_files(output_dir)
    if not found:
        return None
    if overwrite:
        return move_run_aside(output_dir)
    shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    raise ExistingRunError(
        f"OUTPUT_DIR {output_dir} holds an earlier run ({shown}); a new run would overwrite its "
        f"checkpoints, metrics.json and config.yaml. Continue it with `{prog} --resume`, or start "
        f"a new one with `{prog} --overwrite` (the earlier run is moved to "
        f"{os.path.abspath(output_dir)}.old-<time>/, nothing is deleted), or set another "
        "OUTPUT_DIR.")


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_run_config(cfg, start_iter: int = 0) -> str:
    """Write the config of a training run (main process only; call once the model is built and
    its weights are loaded, so that a launch that failed leaves no config behind).

    ``start_iter == 0`` (a new run): ``OUTPUT_DIR/config.yaml``. ``start_iter > 0`` (resumed): the
    original ``config.yaml`` is kept; if this config differs from it, the changed keys are logged
    and this one is written to ``config.resume-<start_iter>.yaml``. Returns the path written, or
    "" when nothing was (unchanged resume). All writes are atomic.
    """
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    text = cfg.dump()
    if start_iter > 0 and os.path.isfile(path):
        with open(path) as f:
            old = _flatten(yaml.safe_load(f))
        new = _flatten(yaml.safe_load(text))
        changed = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))
        if not changed:
            logger.info(f"Resumed with the config of {path} (unchanged).")
            return ""
        path = os.path.join(cfg.OUTPUT_DIR, f"config.resume-{start_iter}.yaml")
        lines = "\n".join(f"  {k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
                          for k in changed)
        logger.warning(f"Resumed at iteration {start_iter} with a config that differs from "
                       f"config.yaml (kept as the run's original) in:\n{lines}\nSaved to {path}")
    with atomic_write(path) as f:
        f.write(text)
    logger.info(f"Full config saved to {path}")
    return path
