"""dl_bench: the table and the JSON on tiny playgrounds, the authors' GFLOPs column of MFARANet
(its BN-free copy), the live-tensor peak-memory measure, and options refused with the fix."""
import json
import os
import statistics
import textwrap

import pytest
import torch

from dl_lib.tools.bench import BenchError, LiveTensorBytes, benchmark, main, parse_sizes

TINY_MACS = 3 * 9 * 8 + 8 * 2  # per pixel: conv 3->8 3x3, conv 8->2 1x1 (Toy/Tiny's net.py)


def test_table_and_json_on_the_tiny_playground(toy_playground, tmp_path, capsys):
    out = tmp_path / "bench" / "tiny.json"
    assert main(["--playground", toy_playground, "--sizes", "16x32,8x8", "--batch", "1,2",
                 "--runs", "3", "--warmup", "1", "--fuse-bn", "--json", str(out)]) == 0
    text = capsys.readouterr()
    table = [line for line in text.out.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == [
        "size", "batch", "median ms", "IQR ms", "min-max ms", "FPS", "peak MB", "params",
        "GMACs/image (1e9)"]
    assert [r.split("|")[1].strip() + "/" + r.split("|")[2].strip() for r in table[2:]] == [
        "16x32/1", "16x32/2", "8x8/1", "8x8/2"]
    assert "random initialisation" in text.out and "inference_mode" in text.out
    assert "folded 1 of 1 norm layers" in text.err and "[4/4] 8x8 batch 2" in text.err

    data = json.loads(out.read_text())
    assert data["params"] == 258 and data["options"]["fuse_bn"] is True
    assert data["fuse_bn"]["folded"] == 1 and data["fuse_bn"]["left"] == {}
    assert data["gmacs"] == {"16x32": TINY_MACS * 16 * 32 / 1e9, "8x8": TINY_MACS * 64 / 1e9}
    assert data["published_cost"] is None  # the toy model states no authors' convention
    assert [(r["size"], r["batch"]) for r in data["results"]] == [
        ([16, 32], 1), ([16, 32], 2), ([8, 8], 1), ([8, 8], 2)]
    for r in data["results"]:
        lat = r["latency_ms"]
        assert len(lat["runs"]) == 3 and lat["median"] == statistics.median(lat["runs"])
        assert lat["min"] <= lat["q25"] <= lat["median"] <= lat["q75"] <= lat["max"]
        assert r["fps"] == pytest.approx(r["batch"] * 1e3 / lat["median"])
        # fused: conv1 output (8 channels, float32) alive with the ReLU's, then freed
        h, w = r["size"]
        assert r["peak_memory_mb"] * 2 ** 20 == 2 * 8 * 4 * h * w * r["batch"]
        assert "live tensors" in r["peak_memory_measure"]


CONFIG = """
from dl_lib.config import config_from_delta
from dl_lib.modeling.mfaranet import backbone_config

config = config_from_delta(dict(MODEL=dict(DEVICE="cpu", META_ARCHITECTURE="MFARANet",
                                           BACKBONE=backbone_config("r18_deep_stem"),
                                           SEM_SEG_HEAD=dict(NUM_CLASSES=19))),
                           family="mfaranet")
"""
NET = """
from dl_lib.modeling import build_model as _build_model

def build_model(cfg):
    return _build_model(cfg)
"""


def test_mfaranet_authors_gflops_on_its_bn_free_copy(tmp_path, capsys):
    folder = tmp_path / "MFARANet" / "R18"
    folder.mkdir(parents=True)
    (folder / "config.py").write_text(textwrap.dedent(CONFIG))
    (folder / "net.py").write_text(textwrap.dedent(NET))
    out = tmp_path / "b.json"
    # 32x64 = 1024x2048 / 32 per side: every feature map scales exactly
    assert main(["--playground", str(folder), "--sizes", "32x64", "--runs", "1", "--warmup",
                 "0", "--no-memory", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "authors' GFLOPs" in text.splitlines()[-3]  # a table column
    data = json.loads(out.read_text())
    paper = data["published_cost"]
    assert paper["convention"] == "hrnet" and paper["params"] == 12_993_164  # MFARANet_Speed
    assert paper["values"]["32x64"] * 1024 == 2 * 101.5830078125  # 203.17 at 1024x2048
    assert data["params"] == 12_997_264
    assert round(data["gmacs"]["32x64"] * 1024, 2) == 218.15
    assert "peak_memory_mb" not in data["results"][0]  # --no-memory


def test_live_tensor_bytes_counts_storages_until_freed():
    x = torch.randn(1000)
    with LiveTensorBytes(ignore=[x]) as mem:
        a = x + 1
        b = a * 2
        view = b.view(10, 100)  # shares b's storage: nothing new
        del a
        c = b + 1
        d = c + 1  # live now: b, c, d
    assert mem.peak == 3 * 4000
    del view, b, c, d
    assert mem.current == 0


@pytest.mark.parametrize("flags, message", [
    (["--amp", "fp16"], "--amp fp16 needs CUDA"),
    (["--compile", "--warmup", "0"], "--compile needs --warmup >= 1"),
    (["--sizes", "16by32"], "is not HxW"),
    (["--batch", "0"], "must be positive"),
    (["--runs", "0"], "time at least one call"),
])
def test_impossible_options_are_refused_with_the_fix(toy_playground, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["--playground", toy_playground, "--sizes", "8x8", "--no-cost"] + flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_cuda_device_without_a_gpu_is_refused(toy_playground, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--playground", toy_playground, "--no-cost", "MODEL.DEVICE", "cuda"])
    assert e.value.code == 2 and "set MODEL.DEVICE cpu" in capsys.readouterr().err


def test_flag_after_overrides_is_refused(toy_playground):
    with pytest.raises(SystemExit):
        main(["--playground", toy_playground, "MODEL.DEVICE", "cpu", "--fuse-bn"])


def test_parse_sizes():
    assert parse_sizes("1024x2048, 512X1024") == [(1024, 2048), (512, 1024)]
    with pytest.raises(BenchError):
        parse_sizes("0x4")


def _tiny_model(device):
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU()).to(device)


def test_channels_last_and_bf16_autocast_on_the_cpu():
    r = benchmark(_tiny_model("cpu"), [(8, 8)], [1, 3], runs=2, warmup=1, channels_last=True,
                  amp_dtype=torch.bfloat16)
    assert [x["batch"] for x in r] == [1, 3] and all(x["peak_memory_mb"] > 0 for x in r)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a GPU")
def test_cuda_events_and_peak_memory_on_gpu():
    r = benchmark(_tiny_model("cuda"), [(64, 64)], [2], runs=3, warmup=1)
    assert r[0]["latency_ms"]["median"] > 0 and len(r[0]["latency_ms"]["runs"]) == 3
    assert r[0]["peak_memory_mb"] > 0 and "cuda" in r[0]["peak_memory_measure"]


STREET_SCENES = os.path.join(os.path.dirname(__file__), "..", "..", "playground", "MFARANet",
                             "R18_DeepStem.Tiny.Synthetic")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(STREET_SCENES), reason="street-scene playground not there")
def test_street_scene_mfaranet_playground_prints_its_table(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--playground", STREET_SCENES, "--sizes", "64x128", "--batch", "1,2", "--runs",
                 "1", "--warmup", "0", "--fuse-bn", "--json", str(out)]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert "authors' GFLOPs" in table[0] and len(table) == 4  # header, rule, batch 1 and 2
    data = json.loads(out.read_text())
    assert data["fuse_bn"]["left"] == {} and data["fuse_bn"]["folded"] == 39
    assert data["published_cost"]["values"]["64x128"] < data["gmacs"]["64x128"]  # 2^30 vs 1e9
