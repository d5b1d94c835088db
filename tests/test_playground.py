"""dl_lib.playground: loading config.py / net.py from playground folders."""
import os
import shutil
import sys
import uuid

import pytest
import torch

from dl_lib import playground
from dl_lib.config import ConfigError
from dl_lib.engine import default_setup

# Not imported from conftest: several conftest.py files share that module name.
FIXTURE_PLAYGROUND = os.path.join(os.path.dirname(__file__), "fixtures", "playground", "Toy", "Tiny")


def _copy_playground(tmp_path, group, name, num_classes):
    folder = tmp_path / "playground" / group / name
    shutil.copytree(FIXTURE_PLAYGROUND, folder)
    text = (folder / "config.py").read_text().replace("NUM_CLASSES=2", f"NUM_CLASSES={num_classes}")
    (folder / "config.py").write_text(text)
    return str(folder)


def test_build_returns_cfg_and_model_with_default_output_dir(toy_playground, tmp_path):
    cfg, model = playground.build(toy_playground, ["SOLVER.LR_SCHEDULER.MAX_ITER", "3"])
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 3
    assert cfg.OUTPUT_DIR == str(tmp_path / "output" / "Toy" / "Tiny")
    assert isinstance(model, torch.nn.Module)
    model.eval()
    image = torch.randint(0, 255, (3, 32, 64), dtype=torch.uint8)
    out = model([{"image": image, "height": 32, "width": 64}])
    assert out[0]["sem_seg"].shape == (2, 32, 64)


def test_two_playgrounds_in_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    a = _copy_playground(tmp_path, "GroupA", "Net", 3)
    b = _copy_playground(tmp_path, "GroupB", "Net", 5)
    cfg_a, model_a = playground.build(a)
    cfg_b, model_b = playground.build(b)
    assert cfg_a.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    assert cfg_b.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 5
    assert model_a.body[-1].out_channels == 3 and model_b.body[-1].out_channels == 5
    # Distinct module names (same <Name>, different <Group>), and no bare "config"/"net" module.
    net_a, net_b = playground.load_net(a), playground.load_net(b)
    assert net_a.__name__ != net_b.__name__
    assert sys.modules[net_a.__name__] is net_a
    assert cfg_a.OUTPUT_DIR.endswith(os.path.join("GroupA", "Net"))
    assert cfg_b.OUTPUT_DIR.endswith(os.path.join("GroupB", "Net"))


def test_loading_does_not_mutate_the_module_config(toy_playground):
    cfg1 = playground.load_config(toy_playground, ["SEED", "5"])
    cfg2 = playground.load_config(toy_playground)
    assert cfg1.SEED == 5 and cfg2.SEED == 0


@pytest.mark.parametrize("missing", ["config.py", "net.py"])
def test_missing_file_is_named(tmp_path, missing):
    folder = tmp_path / "G" / "N"
    folder.mkdir(parents=True)
    other = "net.py" if missing == "config.py" else "config.py"
    (folder / other).write_text("")
    with pytest.raises(playground.PlaygroundError) as e:
        playground.find_playground(str(folder))
    assert f"is not a playground folder: {missing} missing" in str(e.value)
    assert "playground/<Group>/<Name>" in str(e.value)


def test_config_py_without_config_and_net_py_without_build_model(tmp_path):
    folder = tmp_path / "G" / "N"
    folder.mkdir(parents=True)
    (folder / "config.py").write_text("x = 1\n")
    (folder / "net.py").write_text("y = 2\n")
    with pytest.raises(playground.PlaygroundError, match="must define `config`"):
        playground.load_config(str(folder))
    with pytest.raises(playground.PlaygroundError, match="build_model"):
        playground.load_net(str(folder))


def test_bad_override_is_a_config_error(toy_playground):
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER"):
        playground.load_config(toy_playground, ["SOLVER.MAX_ITER", "3"])


def test_explicit_output_dir_is_kept(toy_playground, tmp_path):
    cfg = playground.load_config(toy_playground, ["OUTPUT_DIR", str(tmp_path / "mine")])
    assert cfg.OUTPUT_DIR == str(tmp_path / "mine")


def test_current_folder_is_the_default(toy_playground, monkeypatch):
    monkeypatch.chdir(toy_playground)
    assert playground.find_playground() == os.path.abspath(toy_playground)


# ---- each file runs once per process ------------------------------------------------------------
_COUNTING_CONFIG = '''
import os
from dl_lib.config import config_from_delta
with open(os.path.join(os.path.dirname(__file__), "runs.txt"), "a") as f:
    f.write("config\\n")
config = config_from_delta(dict(MODEL=dict(DEVICE="cpu", META_ARCHITECTURE="{arch}",
                                           SEM_SEG_HEAD=dict(NUM_CLASSES=2))))
'''

# Registers its own meta-architecture: a second execution would raise fvcore's "already registered".
_REGISTERING_NET = '''
import logging
import os
from torch import nn
from dl_lib.modeling import META_ARCH_REGISTRY, build_model as _build_model

logger = logging.getLogger(__name__)
with open(os.path.join(os.path.dirname(__file__), "runs.txt"), "a") as f:
    f.write("net\\n")
if os.path.exists(os.path.join(os.path.dirname(__file__), "fail_once")):
    os.remove(os.path.join(os.path.dirname(__file__), "fail_once"))
    raise RuntimeError("net.py failed half-way")


@META_ARCH_REGISTRY.register()
class {arch}(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Conv2d(3, num_classes, 1)

    @classmethod
    def from_config(cls, cfg):
        return dict(num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)


def build_model(cfg):
    logger.info("built {arch} from the playground's net.py")
    return _build_model(cfg)
'''


def _registering_playground(tmp_path, name="Net"):
    """A playground under tmp_path whose net.py registers a meta-architecture with a fresh name
    (the registry is global to the test process) and whose files count their executions."""
    arch = f"OnceSegmentor_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "playground" / "Registering" / name
    folder.mkdir(parents=True)
    (folder / "config.py").write_text(_COUNTING_CONFIG.format(arch=arch))
    (folder / "net.py").write_text(_REGISTERING_NET.format(arch=arch))
    return folder, arch


def _runs(folder):
    return (folder / "runs.txt").read_text().split()


def test_net_py_registering_a_class_is_imported_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    folder, arch = _registering_playground(tmp_path)
    cfg1, model1 = playground.build(str(folder))
    cfg2, model2 = playground.build(str(folder), ["SEED", "4"])
    net = playground.load_net(str(folder))
    playground.load_config(str(folder))
    assert type(model1).__name__ == arch and type(model2) is type(model1)
    assert _runs(folder) == ["config", "net"]  # each file ran once
    # Configs are still fresh clones: an override of one call does not leak into the next.
    assert cfg2.SEED == 4 and cfg1.SEED == playground.load_config(str(folder)).SEED
    assert cfg1 is not cfg2
    assert net.__name__.startswith(playground.LOGGER_NAME + ".")
    assert sys.modules[net.__name__] is net


def test_same_folder_by_another_path_is_the_same_module(tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    folder, _ = _registering_playground(tmp_path)
    link = tmp_path / "link_to_net"
    link.symlink_to(folder, target_is_directory=True)
    monkeypatch.chdir(folder)
    nets = {playground.load_net(p) for p in (str(folder), str(link), ".", None)}
    assert len(nets) == 1 and _runs(folder) == ["net"]


def test_failed_import_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    folder, _ = _registering_playground(tmp_path)
    (folder / "fail_once").write_text("")
    with pytest.raises(RuntimeError, match="failed half-way"):
        playground.load_net(str(folder))
    net = playground.load_net(str(folder))  # runs again, and this time completes
    assert callable(net.build_model) and sys.modules[net.__name__] is net
    assert _runs(folder) == ["net", "net"]


def test_net_py_logger_reaches_log_txt(tmp_path, monkeypatch):
    """What dl_train does: default_setup, then build; net.py's logger writes to log.txt."""
    monkeypatch.setenv("DL_OUTPUT_ROOT", str(tmp_path / "out"))
    folder, arch = _registering_playground(tmp_path)
    cfg = playground.load_config(str(folder))
    default_setup(cfg)
    playground.build_model(str(folder), cfg)
    log = open(os.path.join(cfg.OUTPUT_DIR, "log.txt")).read()
    assert f"built {arch} from the playground's net.py" in log
