"""Logging set-up: a coloured console line on the main process, a plain-text file per rank.

``setup_logger(output, distributed_rank)`` is called once per process by ``default_setup``; library
modules just use ``logging.getLogger(__name__)``, which propagates to the ``dl_lib`` logger.
"""
import atexit
import functools
import logging
import os
import sys
import time
from collections import Counter
from typing import Optional

from termcolor import colored

__all__ = ["setup_logger", "log_first_n", "log_every_n_seconds"]


class _ColorfulFormatter(logging.Formatter):
    """Prefixes warnings and errors with a coloured tag and shortens the logger name."""

    def __init__(self, *args, root_name: str, abbrev_name: str, **kwargs):
        super().__init__(*args, **kwargs)
        self._root_name = root_name + "."
        self._abbrev_name = abbrev_name + "." if abbrev_name else ""

    def formatMessage(self, record):
        record.name = record.name.replace(self._root_name, self._abbrev_name)
        log = super().formatMessage(record)
        if record.levelno == logging.WARNING:
            prefix = colored("WARNING", "red", attrs=["blink"])
        elif record.levelno in (logging.ERROR, logging.CRITICAL):
            prefix = colored("ERROR", "red", attrs=["blink", "underline"])
        else:
            return log
        return prefix + " " + log


@functools.lru_cache()  # the same (output, rank, name) set up twice would duplicate every line
def setup_logger(output: Optional[str] = None, distributed_rank: int = 0, *, color: bool = True,
                 name: str = "dl_lib", abbrev_name: Optional[str] = None) -> logging.Logger:
    """Configure and return the logger ``name``.

    Args:
        output: a folder (the log goes to ``output/log.txt``) or a file ending in .txt/.log.
            Rank r > 0 writes to ``<file>.rank<r>``. None: console only.
        distributed_rank: only rank 0 logs to the console, to keep multi-process output readable.
        color: colour the console tag of warnings and errors.
        name: the logger to configure; ``abbrev_name`` replaces it in printed names.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if abbrev_name is None:
        abbrev_name = "dl" if name == "dl_lib" else name

    plain = logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s",
                              datefmt="%m/%d %H:%M:%S")
    if distributed_rank == 0:
        ch = logging.StreamHandler(stream=sys.stdout)
        ch.setLevel(logging.DEBUG)
        if color:
            ch.setFormatter(_ColorfulFormatter(
                colored("[%(asctime)s %(name)s]: ", "green") + "%(message)s",
                datefmt="%m/%d %H:%M:%S", root_name=name, abbrev_name=str(abbrev_name)))
        else:
            ch.setFormatter(plain)
        logger.addHandler(ch)

    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        fh = logging.StreamHandler(_cached_log_stream(filename))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(plain)
        logger.addHandler(fh)
    return logger


@functools.lru_cache(maxsize=None)  # one open stream per file even if several loggers use it
def _cached_log_stream(filename: str):
    stream = open(filename, "a", buffering=1)  # line-buffered: a crash keeps the last lines
    atexit.register(stream.close)
    return stream


def _caller_key():
    frame = sys._getframe(2)
    return frame.f_code.co_filename, frame.f_lineno


_LOG_COUNTER: Counter = Counter()
_LOG_TIMER: dict = {}


def log_first_n(lvl: int, msg: str, n: int = 1, *, name: str = "dl_lib") -> None:
    """Log ``msg`` only the first ``n`` times this call site is reached."""
    key = _caller_key() + (msg,)
    _LOG_COUNTER[key] += 1
    if _LOG_COUNTER[key] <= n:
        logging.getLogger(name).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1.0, *, name: str = "dl_lib") -> None:
    """Log ``msg`` at most once every ``n`` seconds from this call site."""
    key = _caller_key()
    now = time.time()
    if key not in _LOG_TIMER or now - _LOG_TIMER[key] >= n:
        logging.getLogger(name).log(lvl, msg)
        _LOG_TIMER[key] = now
