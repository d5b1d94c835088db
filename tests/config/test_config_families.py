"""dl_lib.config families: add_<family>_config keys, their errors, FAMILIES and re-loading."""
import sys
import textwrap

import pytest

import dl_lib.modeling
from dl_lib.config import (CfgNode, ConfigError, config_from_delta, get_cfg, load_config_file,
                           merge_opts, register_family_config, registered_families)
from dl_lib.config import families as families_module

CALLS = []


@register_family_config("tiny_exits_test")
def add_tiny_exits_test_config(cfg):
    CALLS.append("tiny_exits_test")
    cfg.MODEL.EXITS = CfgNode()
    cfg.MODEL.EXITS.NUM_EXITS = 2  # how many heads the tiny family attaches
    cfg.MODEL.EXITS.LOSS_WEIGHTS = [0.5, 1.0]
    cfg.MODEL.EXITS.CONF_THRE = 0.9


@register_family_config("tiny_gate_test")
def add_tiny_gate_test_config(cfg):
    cfg.MODEL.TINY_GATE = CfgNode()
    cfg.MODEL.TINY_GATE.GATE_INIT_BIAS = 1.5


@register_family_config("tiny_nesting_test")
def add_tiny_nesting_test_config(cfg):
    add_tiny_gate_test_config(cfg)  # a family built on another applies it itself
    cfg.MODEL.TINY_NEST = CfgNode()
    cfg.MODEL.TINY_NEST.DEPTH = 2


def test_a_family_that_applies_another_records_both(tmp_path):
    cfg = config_from_delta(dict(MODEL=dict(TINY_GATE=dict(GATE_INIT_BIAS=0.25))),
                            family="tiny_nesting_test")
    assert cfg.FAMILIES == ["tiny_gate_test", "tiny_nesting_test"]
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    again = load_config_file(str(path))  # the inner family's keys come back on reload
    assert again.MODEL.TINY_GATE.GATE_INIT_BIAS == 0.25 and again.MODEL.TINY_NEST.DEPTH == 2


def test_family_adds_keys_that_a_delta_sets_and_records_its_name():
    cfg = config_from_delta(dict(MODEL=dict(EXITS=dict(NUM_EXITS=4))), family="tiny_exits_test")
    assert cfg.MODEL.EXITS.NUM_EXITS == 4 and cfg.MODEL.EXITS.CONF_THRE == 0.9
    assert cfg.FAMILIES == ["tiny_exits_test"]
    assert "EXITS" not in get_cfg().MODEL and get_cfg().FAMILIES == []  # core defaults stay small


def test_several_families_and_a_base_apply_each_function_once():
    CALLS.clear()
    base = config_from_delta(family="tiny_exits_test")
    child = config_from_delta(dict(MODEL=dict(TINY_GATE=dict(GATE_INIT_BIAS=0.5))), base=base,
                              family=["tiny_exits_test", "tiny_gate_test"])
    assert CALLS == ["tiny_exits_test"]  # the base already held the exit keys
    assert child.FAMILIES == ["tiny_exits_test", "tiny_gate_test"]
    assert child.MODEL.TINY_GATE.GATE_INIT_BIAS == 0.5 and "TINY_GATE" not in base.MODEL


def test_calling_the_family_function_directly_records_it_once():
    CALLS.clear()
    cfg = get_cfg()
    add_tiny_exits_test_config(cfg)
    add_tiny_exits_test_config(cfg)  # detectron2 style; a second call is a no-op
    assert CALLS == ["tiny_exits_test"] and cfg.FAMILIES == ["tiny_exits_test"]
    assert cfg.MODEL.EXITS.NUM_EXITS == 2


def test_unknown_key_names_closest_family_keys_and_points_to_the_family_function():
    with pytest.raises(ConfigError) as e:
        config_from_delta(dict(MODEL=dict(EXITS=dict(NUM_EXIT=3))), family="tiny_exits_test")
    msg = str(e.value)
    assert "MODEL.EXITS.NUM_EXIT'" in msg
    assert "MODEL.EXITS.NUM_EXITS" in msg.split("Closest valid keys:")[1]
    assert "add_<family>_config" in msg and "tiny_exits_test" in msg
    assert "add new keys there" not in msg  # the old advice: edit defaults.py


def test_family_key_without_its_family_is_unknown_and_says_where_keys_come_from():
    with pytest.raises(ConfigError, match=r"FAMILIES \(none\)"):
        config_from_delta(dict(MODEL=dict(EXITS=dict(NUM_EXITS=3))))


def test_wrong_type_of_a_family_key_names_it():
    with pytest.raises(ConfigError) as e:
        config_from_delta(dict(MODEL=dict(EXITS=dict(NUM_EXITS="two"))), family="tiny_exits_test")
    assert "MODEL.EXITS.NUM_EXITS" in str(e.value) and "int" in str(e.value)


def test_command_line_overrides_know_the_family_keys():
    cfg = config_from_delta(family="tiny_exits_test")
    merge_opts(cfg, ["MODEL.EXITS.LOSS_WEIGHTS", "[1.0, 2.0]"])
    assert list(cfg.MODEL.EXITS.LOSS_WEIGHTS) == [1.0, 2.0]
    with pytest.raises(ConfigError, match="MODEL.EXITS.CONF_THRE"):
        merge_opts(cfg, ["MODEL.EXITS.CONF_THR", "0.5"])


def test_unknown_family_lists_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        config_from_delta(family="tiny_exitz_test")
    msg = str(e.value)
    assert "'tiny_exitz_test'" in msg and "tiny_exits_test" in msg and "tiny_gate_test" in msg
    assert "tiny_exits_test" in registered_families()


def test_dumped_config_reloads_with_family_keys(tmp_path):
    cfg = config_from_delta(dict(MODEL=dict(EXITS=dict(LOSS_WEIGHTS=[0.2, 0.8])),
                                 DATASETS=dict(TRAIN=("a", "b"))),
                            family=["tiny_exits_test", "tiny_gate_test"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    again = load_config_file(str(path))
    assert again == cfg
    assert again.FAMILIES == ["tiny_exits_test", "tiny_gate_test"]


def test_families_in_a_delta_or_override_add_keys_but_never_drop_them():
    cfg = config_from_delta(dict(FAMILIES=["tiny_gate_test"], MODEL=dict(TINY_GATE=dict(GATE_INIT_BIAS=2.0))))
    assert cfg.MODEL.TINY_GATE.GATE_INIT_BIAS == 2.0
    merge_opts(cfg, ["FAMILIES", "['tiny_gate_test', 'tiny_exits_test']", "MODEL.EXITS.NUM_EXITS", "3"])
    assert cfg.MODEL.EXITS.NUM_EXITS == 3
    with pytest.raises(ConfigError, match="drops"):
        merge_opts(cfg, ["FAMILIES", "['tiny_exits_test']"])


@pytest.fixture
def family_package(tmp_path, monkeypatch):
    """A folder added to dl_lib.modeling's package path, so ``dl_lib.modeling.<name>.config``
    resolves there; its modules and registrations are removed afterwards."""
    monkeypatch.setattr(dl_lib.modeling, "__path__", list(dl_lib.modeling.__path__) + [str(tmp_path)])
    created = []

    def make(name, config_source):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "config.py").write_text(textwrap.dedent(config_source))
        created.append(name)

    yield make
    for name in created:
        families_module._FAMILY_CONFIGS.pop(name, None)
        for mod in (f"dl_lib.modeling.{name}.config", f"dl_lib.modeling.{name}"):
            sys.modules.pop(mod, None)


def test_unregistered_family_is_imported_from_dl_lib_modeling(family_package):
    family_package("lazy_decorated_test", """
        from dl_lib.config import CfgNode, register_family_config

        @register_family_config("lazy_decorated_test")
        def add_lazy_decorated_test_config(cfg):
            cfg.MODEL.LAZY = CfgNode()
            cfg.MODEL.LAZY.WIDTH = 8
    """)
    family_package("lazy_plain_test", """
        def add_lazy_plain_test_config(cfg):  # found by its name, no decorator
            cfg.MODEL.PLAIN_WIDTH = 4
    """)
    assert {"lazy_decorated_test", "lazy_plain_test"} <= set(registered_families())
    cfg = config_from_delta(dict(MODEL=dict(LAZY=dict(WIDTH=16), PLAIN_WIDTH=2)),
                            family=["lazy_decorated_test", "lazy_plain_test"])
    assert cfg.MODEL.LAZY.WIDTH == 16 and cfg.MODEL.PLAIN_WIDTH == 2


def test_family_module_without_a_config_function_says_so(family_package):
    family_package("lazy_empty_test", "X = 1\n")
    with pytest.raises(ConfigError, match="defines neither"):
        config_from_delta(family="lazy_empty_test")


def test_family_module_with_an_import_error_is_not_hidden(family_package):
    family_package("lazy_broken_test", "import a_module_that_does_not_exist_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_xyz"):
        config_from_delta(family="lazy_broken_test")


def test_a_name_registered_twice_by_different_functions_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_family_config("tiny_gate_test")(lambda cfg: None)
