"""tools/demo.py (``make demo``): its default playground is the dynamic-routing demo with gates
and budget on, and what it prints from a run folder (GFLOPs table, speed, routes per panel)."""
import importlib.util
import json
import os

from dl_lib import playground
from dl_lib.modeling.dynamic_routing.routes import save_routes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _demo():
    spec = importlib.util.spec_from_file_location("dl_demo_tool", os.path.join(REPO, "tools", "demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_playground_is_the_routing_demo_and_the_fpn_quickstart_stays():
    demo = _demo()
    cfg = playground.load_config(demo.DEFAULT_PLAYGROUND)
    assert os.path.relpath(demo.DEFAULT_PLAYGROUND, REPO) == "playground/Quickstart/Seg.Layer6.Tiny.Synthetic"
    assert cfg.MODEL.META_ARCHITECTURE == "DynamicRoutingSegmentor"
    assert cfg.MODEL.GATE.GATE_ON and cfg.MODEL.BUDGET.CONSTRAIN
    assert cfg.MODEL.BUDGET.LOSS_WEIGHT > 0 and 0 < cfg.MODEL.BUDGET.LOSS_MU < 1
    assert cfg.DATASETS.TEST == ("synthetic_cityscapes_val",) and cfg.TEST.VIS_NUM_IMAGES > 0
    fpn = os.path.join(REPO, "playground", "Quickstart", "FPN.R18W32.Synthetic")
    assert playground.load_config(fpn).MODEL.META_ARCHITECTURE == "SemanticSegmentor"


def test_routing_demo_trainer_decodes_each_scene_once(monkeypatch):
    """The demo's train loader keeps the decoded scenes in its worker (on 2 cores, PNG decoding
    every epoch takes CPU from the training step), so its Trainer passes a caching mapper."""
    from dl_lib.engine import DefaultTrainer

    demo = _demo()
    cfg = playground.load_config(demo.DEFAULT_PLAYGROUND)
    net = playground.load_net(demo.DEFAULT_PLAYGROUND)
    assert issubclass(net.Trainer, DefaultTrainer)
    seen = {}
    monkeypatch.setattr(net, "build_train_loader", lambda cfg, mapper=None: seen.setdefault("m", mapper))
    net.Trainer.build_train_loader(cfg)
    assert seen["m"].is_train and seen["m"]._decoded == {}  # caching, nothing decoded yet


def test_prints_gflops_speed_and_routes(tmp_path, capsys):
    demo = _demo()
    sem_seg = {"mIoU": 55.0, "mean_real_gflops": 0.12, "min_real_gflops": 0.1, "max_real_gflops": 0.125,
               "mean_real_corrected_gflops": 0.13, "min_real_corrected_gflops": 0.11,
               "max_real_corrected_gflops": 0.14}
    demo._print_gflops(sem_seg, "short side 128")
    out = capsys.readouterr().out
    assert "original's count | 0.1200 | 0.1000 | 0.1250" in out
    assert "corrected count  | 0.1300 | 0.1100 | 0.1400" in out
    assert "expected" not in out  # not reported: no row
    demo._print_gflops({"mIoU": 50.0}, "short side 128")  # a model without costs: nothing
    assert capsys.readouterr().out == ""

    with open(tmp_path / "metrics.json", "w") as f:
        for it, t in ((19, 9.0), (39, 1.0), (59, 3.0), (79, 2.0)):
            f.write(json.dumps({"iteration": it, "time": t, "budget_ratio": 0.4}) + "\n")
        f.write('{"iteration": 80, "ti')  # cut short by a kill
    assert demo._training_speed(str(tmp_path)) == (80, 2.0, 0.4)  # warm-up window left out

    png = tmp_path / "0000_x.png"
    png.write_bytes(b"")
    save_routes(str(tmp_path / "0000_x.routes.json"),
                {"init": [0.9, 0.0], "0.0": [0.5, 0.0], "0.1": [0.0, 0.0], "1.0": [0.7]},
                flops={"real_gflops": 0.05})
    demo._print_routes([str(png)])
    out = capsys.readouterr().out
    assert "0000_x.png: 3/7 routes open, 3/4 cells run, 0.0500 GFLOPs" in out
