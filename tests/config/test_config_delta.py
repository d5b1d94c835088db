"""dl_lib.config: playground deltas, command-line overrides and their errors."""
import pytest

from dl_lib.config import ConfigError, config_from_delta, get_cfg, merge_delta, merge_opts


def test_delta_overrides_only_given_keys():
    cfg = config_from_delta(dict(SOLVER=dict(IMS_PER_BATCH=16), MODEL=dict(WEIGHTS="w.pth")))
    assert cfg.SOLVER.IMS_PER_BATCH == 16
    assert cfg.MODEL.WEIGHTS == "w.pth"
    # Everything else stays at the library defaults, and the defaults are not modified.
    assert cfg.SOLVER.OPTIMIZER.BASE_LR == get_cfg().SOLVER.OPTIMIZER.BASE_LR
    assert get_cfg().MODEL.WEIGHTS == ""


def test_delta_on_a_base_config_leaves_base_untouched():
    base = config_from_delta(dict(SEED=3))
    child = config_from_delta(dict(SOLVER=dict(GRAD_CLIP=5.0)), base=base)
    assert child.SEED == 3 and child.SOLVER.GRAD_CLIP == 5.0
    assert base.SOLVER.GRAD_CLIP == 0.0


def test_unknown_key_names_key_and_closest_keys():
    with pytest.raises(ConfigError) as e:
        config_from_delta(dict(SOLVER=dict(IMS_PER_BATCHH=4)))
    msg = str(e.value)
    assert "SOLVER.IMS_PER_BATCHH" in msg
    assert "SOLVER.IMS_PER_BATCH" in msg.split("Closest valid keys:")[1]


def test_key_under_wrong_parent_suggests_right_place():
    with pytest.raises(ConfigError, match="SOLVER.LR_SCHEDULER.MAX_ITER"):
        config_from_delta(dict(SOLVER=dict(MAX_ITER=10)))


def test_wrong_type_names_key_expected_and_given():
    with pytest.raises(ConfigError) as e:
        config_from_delta(dict(SOLVER=dict(IMS_PER_BATCH="eight")))
    msg = str(e.value)
    assert "SOLVER.IMS_PER_BATCH" in msg and "int" in msg and "'eight'" in msg


def test_group_given_a_value_and_value_given_a_group():
    with pytest.raises(ConfigError, match="group"):
        config_from_delta(dict(SOLVER=3))
    with pytest.raises(ConfigError, match="single value"):
        config_from_delta(dict(SEED=dict(A=1)))


def test_int_promotes_to_float_but_not_to_bool():
    cfg = config_from_delta(dict(SOLVER=dict(OPTIMIZER=dict(BASE_LR=1))))
    assert isinstance(cfg.SOLVER.OPTIMIZER.BASE_LR, float)
    with pytest.raises(ConfigError):
        config_from_delta(dict(DETERMINISTIC=1))


def test_merge_opts_parses_literals_and_checks_keys():
    cfg = get_cfg()
    merge_opts(cfg, ["SOLVER.LR_SCHEDULER.MAX_ITER", "12", "MODEL.WEIGHTS", "a/b.pth",
                     "INPUT.CROP_PAD.SIZE", "[32, 64]", "DETERMINISTIC", "True"])
    assert cfg.SOLVER.LR_SCHEDULER.MAX_ITER == 12
    assert cfg.MODEL.WEIGHTS == "a/b.pth"
    assert list(cfg.INPUT.CROP_PAD.SIZE) == [32, 64]
    assert cfg.DETERMINISTIC is True
    with pytest.raises(ConfigError, match="MODEL.WEIGHT'"):
        merge_opts(cfg, ["MODEL.WEIGHT", "x"])
    with pytest.raises(ConfigError, match="pairs"):
        merge_opts(cfg, ["MODEL.WEIGHTS"])
    with pytest.raises(ConfigError, match="Flags must come before"):
        merge_opts(cfg, ["--resume", "x"])


def test_merge_delta_in_place_returns_cfg():
    cfg = get_cfg()
    assert merge_delta(cfg, {"SEED": 7}) is cfg and cfg.SEED == 7
