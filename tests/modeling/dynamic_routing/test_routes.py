"""The routes an image took: save_routes -> MODEL.GATE.ROUTES_FILE forces them again (same
logits), trace_routes agrees with what the model ran, draw_routes and the routes panel."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dl_lib import playground
from dl_lib.evaluation import write_panels
from dl_lib.data.catalog import DatasetCatalog, MetadataCatalog
from dl_lib.modeling.dynamic_routing.dynamic_routing import load_routes_file
from dl_lib.modeling.dynamic_routing.routes import (draw_routes, route_names, routes_from_gates,
                                                    save_routes, trace_routes)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEMO = os.path.join(REPO, "playground", "Quickstart", "Seg.Layer6.Tiny.Synthetic")
TINY = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.LAYER_NUM", "4", "MODEL.BACKBONE.INIT_CHANNEL", "8"]


def _register(name, dicts, **meta):
    for catalog in (DatasetCatalog, MetadataCatalog):
        if name in catalog:
            catalog.remove(name)
    DatasetCatalog.register(name, lambda: list(dicts))
    MetadataCatalog.get(name).set(**meta)


def _tiny_model(opts=()):
    """The demo's network, 4 layers of width 8, with gate biases around 0 so that gates close
    and images take different routes."""
    torch.manual_seed(0)
    _, model = playground.build(DEMO, TINY + list(opts))
    for _, cell in model.backbone.cells():
        torch.nn.init.uniform_(cell.gate_conv_beta[2].bias, -0.6, 0.6)
        torch.nn.init.normal_(cell.gate_conv_beta[2].weight, std=2.0)
    return model.eval()


def _images(n=2):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=g),
             "height": 64, "width": 96} for _ in range(n)]


def _run(model, inputs):
    model.backbone.record_gates = True
    with torch.no_grad():
        return model(inputs)


def test_route_names_are_the_cells_gate_order():
    model = _tiny_model()
    for name, cell in model.backbone.cells():
        assert route_names(name, cell.gate_num) == sorted(cell.route_index, key=cell.route_index.get), name


def test_forcing_an_images_saved_routes_reproduces_its_logits(tmp_path):
    model = _tiny_model()
    inputs = _images(2)
    outs = _run(model, inputs)
    gates = [o["gates"] for o in outs]
    assert routes_from_gates(gates[0]) != routes_from_gates(gates[1])  # the images differ
    closed = sum(v <= 1e-4 for g in gates[0].values() for v in g)
    assert closed > 0  # some routes are closed, so forcing them matters

    path = str(tmp_path / "routes.json")
    save_routes(path, gates[0], image_id="a", flops=outs[0]["flops"])
    assert json.load(open(path))["image_id"] == "a"
    # The user's way: a model built with MODEL.GATE.ROUTES_FILE, the same weights.
    forced = _tiny_model(["MODEL.GATE.ROUTES_FILE", path])
    forced.load_state_dict(model.state_dict())
    again = _run(forced, inputs[:1])[0]
    alone = _run(model, inputs[:1])[0]  # the same batch shape: bit for bit
    assert torch.equal(again["sem_seg"], alone["sem_seg"])
    assert again["gates"] == gates[0] == alone["gates"]
    f, f0 = again["flops"], outs[0]["flops"]
    assert (f["real_gflops"], f["expt_gflops"]) == pytest.approx((f0["real_gflops"], f0["expt_gflops"]))
    assert f["real_corrected_gflops"] < f0["real_corrected_gflops"]  # forced: no gate networks run
    # The other image's routes forced on image 0 give other logits: the file is what decides.
    save_routes(path, gates[1])
    model.backbone.force_gates(None, load_routes_file(path))
    other = _run(model, inputs[:1])[0]
    assert not torch.allclose(other["sem_seg"], outs[0]["sem_seg"])


def test_trace_routes_agrees_with_what_the_model_ran():
    model = _tiny_model()
    ran = set()
    for name, cell in model.backbone.cells():
        cell.cell_ops.register_forward_hook(lambda m, i, o, name=name: ran.add(name))
    for inp in _images(2):
        ran.clear()
        gates = _run(model, [inp])[0]["gates"]
        trace = trace_routes(gates, model.backbone.skip_threshold)
        assert {n for n, s in trace.cells.items() if s == "runs"} == ran
        assert set(trace.cells) == {n for n, _ in model.backbone.cells()}
        idle = [n for n, s in trace.cells.items() if s == "idle"]
        assert all(max(gates[n]) == 0 for n in idle)  # a cell not reached reports zeros
        assert trace.count("open") == sum(v > 1e-4 for n in ran for v in gates[n])


def test_trace_routes_by_hand():
    # Layer16's first layers cut to 3: layer 0 has scales 0-1, layer 1 0-2, layer 2 (last) 0-3.
    gates = {"init": [0.9, 0.0],                                # keep open, down closed
             "0.0": [0.0, 0.0], "0.1": [0.0, 0.0],              # 0.0 reached, all closed: passes
             "1.0": [0.5, 0.7], "1.1": [0.0, 0.0, 0.0], "1.2": [0.0, 0.0],
             "2.0": [0.8], "2.1": [0.0], "2.2": [0.0], "2.3": [0.0]}
    trace = trace_routes(gates)
    assert trace.cells == {"init": "runs", "0.0": "passes", "0.1": "idle", "1.0": "runs",
                           "1.1": "idle", "1.2": "idle", "2.0": "runs", "2.1": "passes",
                           "2.2": "idle", "2.3": "idle"}
    kinds = {(s, d): k for s, d, _, _, k in trace.edges}
    assert kinds[("init", "0.0")] == "open" and kinds[("init", "0.1")] == "closed"
    assert kinds[("0.0", "1.0")] == "identity" and kinds[("0.0", "1.1")] == "closed"
    assert kinds[("1.0", "2.1")] == "open" and kinds[("2.1", "head.1")] == "identity"
    assert kinds[("2.0", "head.0")] == "open" and kinds[("2.2", "head.2")] == "closed"
    assert (trace.layers, trace.scales, trace.count("open")) == (3, 4, 4)


def _blue(picture):
    return int(((picture[..., 2] > 150) & (picture[..., 0] < 80)).sum())


def test_draw_routes_line_width_follows_the_gate():
    wide = {"init": [0.95, 0.95], "0.0": [0.95, 0.95], "0.1": [0.95, 0.95]}
    thin = {"init": [0.95, 0.95], "0.0": [0.2, 0.2], "0.1": [0.2, 0.2]}
    a, b = draw_routes(wide, width=400), draw_routes(thin, width=400)
    assert a.shape == b.shape == (200, 400, 3) and a.dtype == np.uint8
    assert _blue(a) > _blue(b) > 0


def test_write_panels_adds_the_routes_picture_and_file(tmp_path):
    Image.fromarray(np.full((64, 96, 3), 90, np.uint8)).save(tmp_path / "0.png")
    _register("test_vis_routes", [{"file_name": str(tmp_path / "0.png"), "image_id": "x"}],
             stuff_classes=[str(i) for i in range(19)], ignore_label=255)
    model = _tiny_model()
    model.backbone.record_gates = False
    cfg, _ = playground.build(DEMO, TINY)
    cfg.INPUT.MIN_SIZE_TEST = 0  # no resizing
    path, = write_panels(cfg, model, "test_vis_routes", str(tmp_path / "out"), 1)
    assert model.backbone.record_gates is False  # restored
    panel = np.asarray(Image.open(path).convert("RGB"))
    assert panel.shape[1] == 3 * 96 and panel.shape[0] > 200 + 64
    routes = load_routes_file(os.path.splitext(path)[0] + ".routes.json")
    assert set(routes) == {n for n, _ in model.backbone.cells()}
