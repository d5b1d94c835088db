"""Seeds derived from keys, for randomness that depends on *what* is computed, not on *when*.

Exact resume needs iteration ``i`` of a resumed run to draw the same random numbers as iteration
``i`` of an uninterrupted one. Restoring RNG states from a checkpoint cannot do that for
data-loader workers (their states live in other processes) nor for the other ranks (only rank 0
saves), so the library seeds instead: each training sample from ``(loader seed, its position in
the sample stream)`` and each iteration from ``(SEED, rank, iteration)``. The result is also
independent of ``DATALOADER.NUM_WORKERS``.
"""
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

__all__ = ["derive_seed", "seed_global_rngs", "forked_rngs"]


def derive_seed(*keys: int) -> int:
    """A well-mixed seed in ``[0, 2**31)`` from integer ``keys`` (NumPy's ``SeedSequence``):
    ``derive_seed(s, 1)`` and ``derive_seed(s, 2)`` start unrelated streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_global_rngs(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def forked_rngs(seed: int) -> Iterator[None]:
    """Inside the block Python's ``random``, NumPy's global RNG and torch's CPU generator are
    seeded with ``seed``; after it their previous states are back, so code around the block
    (the training step in the main process when ``NUM_WORKERS`` is 0) draws as if it had not run.
    CUDA generators are left alone (data loading does not use them)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
