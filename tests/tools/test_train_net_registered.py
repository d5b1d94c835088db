"""The real ``dl_train`` / ``dl_test`` / ``dl_flops`` on a playground whose net.py registers its own classes
and data set, with the library's own loaders and mapper (``tests/fixtures/playground/Registered``).
"""
import json
import os
import subprocess
import sys

import pytest
from toy_data import write_split

from dl_lib import playground
from dl_lib.tools import flops

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "playground",
                       "Registered", "TinyFPN")
NET_LOG_LINE = "net.py of Registered/TinyFPN builds RegisteredTinySegmentor"



def _command(name):
    script = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(script):  # the installed console script
        return [script]
    main = "main_train" if name == "dl_train" else "main_test"
    return [sys.executable, "-c", f"import sys; from dl_lib.tools.train_net import {main}; sys.exit({main}())"]


@pytest.mark.slow
def test_dl_train_on_a_playground_that_registers_its_classes(tmp_path):
    data = str(tmp_path / "data")
    write_split(data, "train", 4, 0)
    write_split(data, "val", 2, 1)
    env = dict(os.environ, OMP_NUM_THREADS="1", DL_OUTPUT_ROOT=str(tmp_path / "out"),
               REGISTERED_TINY_DATA=data)

    def run(name, *args):
        proc = subprocess.run(_command(name) + ["--playground", FIXTURE, "--num-gpus", "1", *args],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run("dl_train")
    out = tmp_path / "out" / "Registered" / "TinyFPN"

    log = (out / "log.txt").read_text()
    assert NET_LOG_LINE in log  # the playground's own logger reaches log.txt
    assert "Built RegisteredTinySegmentor" in log
    assert "Train loader: 4 images from" in log  # dl_lib.data's loader, not a Trainer override

    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines if "total_loss" in line] == [0, 1, 2, 3, 4, 5]

    results = json.loads((out / "results.json").read_text())["registered_tiny_val"]["sem_seg"]
    assert results["mIoU"] == pytest.approx((results["IoU-dark"] + results["IoU-red"]) / 2)
    assert results["mIoU"] == pytest.approx(lines[-1]["sem_seg/mIoU"])

    # dl_test of the final weights (one process, same BN statistics) scores what training did.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    run("dl_test", "MODEL.WEIGHTS", str(out / "model_final.pth"))
    written = [p for p in out.rglob("results.json") if before.get(p) != p.stat().st_mtime_ns]
    assert len(written) == 1, written
    tested = json.loads(written[0].read_text())["registered_tiny_val"]["sem_seg"]
    assert tested["mIoU"] == pytest.approx(results["mIoU"], abs=1e-6)


def test_dl_flops_and_build_on_a_playground_that_registers_its_classes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    for _ in range(2):  # a second run in the same process finds the classes registered once
        assert flops.main(["--playground", FIXTURE, "--size", "32", "64"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Input size: 1x3x32x64") == 2 and "Total:" in printed
    cfg, model = playground.build(FIXTURE)
    assert type(model).__name__ == "RegisteredTinySegmentor"
    assert type(model.backbone).__name__ == "TinyBackbone"
