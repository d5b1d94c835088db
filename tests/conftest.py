"""Shared test fixtures (keep small): the tiny fixture playground and isolated output folders."""
import os

import pytest
from hypothesis import settings

# Property tests draw new examples on every local run; CI (CI=true) replays a fixed sequence so
# that a red build always means a change, never a newly drawn example.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config):
    # Tests over ~10 s; they still run in `make test` (select against them with -m "not slow").
    config.addinivalue_line("markers", "slow: takes more than ~10 s on a 2-core CPU machine")

FIXTURE_PLAYGROUND = os.path.join(os.path.dirname(__file__), "fixtures", "playground", "Toy", "Tiny")


@pytest.fixture
def toy_playground(tmp_path, monkeypatch):
    """Path of ``tests/fixtures/playground/Toy/Tiny``, with outputs and its data under tmp_path.

    Sets ``DL_OUTPUT_ROOT`` (so OUTPUT_DIR is ``tmp_path/output/Toy/Tiny``) and ``TOY_DATA_ROOT``.
    """
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "output"))
    monkeypatch.setenv("TOY_DATA_ROOT", str(tmp_path / "toy_data"))
    return FIXTURE_PLAYGROUND


@pytest.fixture
def one_thread():
    """torch at 1 intra-op thread for the test: several threads on a loaded 2-core machine wait on
    each other (tens of times slower). ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
