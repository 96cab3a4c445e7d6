import math

import pytest

from dinov2.utils.config import ConfigError, load_config, scaled_lr


def test_defaults_match_official_values():
    cfg = load_config(None)
    assert cfg.dino.head_n_prototypes == 65536
    assert cfg.train.OFFICIAL_EPOCH_LENGTH == 1250
    assert cfg.student.interpolate_offset == 0.1
    assert cfg.teacher.momentum_teacher == 0.992


def test_recipe_and_overrides_merge_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  epochs: 7\nstudent:\n  arch: vit_small\n")
    cfg = load_config(recipe, ["optim.epochs=3", "ibot.mask_ratio_min_max=[0.2,0.4]"])
    assert cfg.optim.epochs == 3
    assert cfg.student.arch == "vit_small"
    assert list(cfg.ibot.mask_ratio_min_max) == [0.2, 0.4]


def test_unknown_key_in_file_names_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  epoch: 7\n")
    with pytest.raises(ConfigError, match="optim.epoch"):
        load_config(recipe)


def test_unknown_key_on_command_line_names_the_key():
    with pytest.raises(ConfigError, match="train.batchsize"):
        load_config(None, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.batch_size_per_gpu"])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_lr_scaling_rules():
    cfg = load_config(None, ["train.batch_size_per_gpu=64"])
    assert scaled_lr(cfg, world_size=32) == pytest.approx(0.004 * math.sqrt(2))
    cfg = load_config(None, ["optim.scaling_rule=linear_wrt_1024", "train.batch_size_per_gpu=128"])
    assert scaled_lr(cfg, world_size=4) == pytest.approx(0.002)
    with pytest.raises(ConfigError, match=r"optim.scaling_rule='sqrt': expected one of \['sqrt_wrt_1024'"):
        load_config(None, ["optim.scaling_rule=sqrt"])
    cfg.optim.scaling_rule = "sqrt"  # set after loading, past the schema
    with pytest.raises(ConfigError, match="optim.scaling_rule"):
        scaled_lr(cfg, world_size=1)
