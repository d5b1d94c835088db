"""Evaluation outputs are replaced atomically: a dl_test that dies while writing results.json,
sem_seg_evaluation.json or a panel leaves the previous file whole (and no temporary file)."""
import json

import pytest
from PIL import Image

from dl_lib.engine import defaults as engine_defaults
from dl_lib.evaluation import sem_seg
from dl_lib.tools import train_net


class _DiesMidWrite:
    """Stands in for the ``json`` module of one writer: writes a fragment, then fails."""

    def __init__(self, real):
        self._real = real

    def dump(self, obj, f, **kwargs):
        f.write('{"half": ')
        raise OSError("disk full (simulated)")

    def __getattr__(self, name):
        return getattr(self._real, name)


def _contents(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name not in ("log.txt", ".lock")}


def test_a_crash_while_writing_keeps_the_previous_outputs(toy_playground, tmp_path, monkeypatch):
    out = tmp_path / "run"
    inference = out / "inference" / "random_init"
    opts = ["--playground", toy_playground, "--random-weights", "OUTPUT_DIR", str(out),
            "TEST.VIS_NUM_IMAGES", "1"]
    train_net.main_test(opts)
    before = _contents(inference)
    assert {p.name for p in before} >= {"results.json", "sem_seg_evaluation.json"}
    assert any(p.parent.name == "vis" for p in before)
    json.loads((inference / "results.json").read_text())  # a whole file to start from

    def panel_dies_mid_write(self, fp, *args, **kwargs):
        (fp.write if hasattr(fp, "write") else open(fp, "wb").write)(b"\x89PNG half")
        raise OSError("disk full (simulated)")

    crashes = [(sem_seg, "json", _DiesMidWrite(json)),
               (engine_defaults, "json", _DiesMidWrite(json)),
               (Image.Image, "save", panel_dies_mid_write)]
    for owner, name, broken in crashes:
        with monkeypatch.context() as m:
            m.setattr(owner, name, broken)
            with pytest.raises(OSError, match="simulated"):
                train_net.main_test(opts)
        assert _contents(inference) == before, f"{owner.__name__}.{name}"
        assert not [p for p in inference.rglob("*.tmp.*")]
