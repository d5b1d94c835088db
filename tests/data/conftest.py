import os

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def datasets_root(tmp_path, monkeypatch):
    """A private $DL_DATASETS for one test."""
    root = tmp_path / "datasets"
    root.mkdir()
    monkeypatch.setenv("DL_DATASETS", str(root))
    return root


@pytest.fixture
def write_png():
    def write(path, array, mode=None, palette=None):
        os.makedirs(os.path.dirname(str(path)), exist_ok=True)
        im = Image.fromarray(np.asarray(array), mode=mode) if mode else Image.fromarray(np.asarray(array))
        if palette is not None:
            im.putpalette(palette)
        im.save(str(path))
        return str(path)
    return write


@pytest.fixture
def unique_name(request):
    """A dataset name private to the test, removed from the catalogs afterwards."""
    from dl_lib.data import DatasetCatalog, MetadataCatalog

    name = "test_" + request.node.name.replace("[", "_").replace("]", "_")
    yield name
    for cat in (DatasetCatalog, MetadataCatalog):
        if name in cat:
            cat.remove(name)
