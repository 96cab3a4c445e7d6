"""build_model / build_model_from_cfg: config keys -> student and teacher backbones."""

import pytest
import torch

from dinov2.models import build_model, build_model_from_cfg
from dinov2.utils.config import load_config

TINY = ["student.arch=vit_tiny", "student.depth=3", "crops.global_crops_size=32", "student.patch_size=8"]


def test_student_and_teacher_from_config():
    cfg = load_config(None, TINY + ["student.drop_path_rate=0.2", "student.drop_path_uniform=false",
                                    "student.layerscale=0.1", "student.block_chunks=3",
                                    "student.num_register_tokens=2"])  # fmt: skip
    student, teacher, embed_dim = build_model_from_cfg(cfg)
    assert embed_dim == 192 and student.n_blocks == teacher.n_blocks == 3
    assert student.pos_embed.shape == (1, 17, 192) and student.patch_size == 8
    assert [b.sample_drop_ratio for b in student.iter_blocks()] == pytest.approx([0.0, 0.1, 0.2])
    assert all(b.sample_drop_ratio == 0.0 for b in teacher.iter_blocks()), "the teacher has no drop path"
    assert torch.all(next(student.iter_blocks()).ls1.gamma == 0.1)
    assert "blocks.2.2.ls2.gamma" in teacher.state_dict() and teacher.num_register_tokens == 2
    assert student.state_dict().keys() == teacher.state_dict().keys()


def test_only_teacher_and_defaults():
    cfg = load_config(None, TINY)
    teacher, embed_dim = build_model_from_cfg(cfg, only_teacher=True)
    assert embed_dim == 192 and teacher.interpolate_offset == 0.1 and not teacher.chunked_blocks
    student, _, _ = build_model(cfg.student, img_size=64)
    assert student.pos_embed.shape == (1, 65, 192)
    assert [b.sample_drop_ratio for b in student.iter_blocks()] == pytest.approx([0.3] * 3)  # default uniform 0.3


def test_null_depth_keeps_the_arch_depth_and_zero_layerscale_removes_gamma():
    with torch.device("meta"):
        teacher, _ = build_model_from_cfg(load_config(None, ["student.arch=vit_small", "student.layerscale=0"]),
                                          only_teacher=True)  # fmt: skip
    assert teacher.n_blocks == 12
    assert not any("gamma" in k for k in teacher.state_dict())


def test_unknown_arch_names_the_key():
    with pytest.raises(ValueError, match=r"student.arch='vit_huge': expected one of \['vit_base'"):
        load_config(None, ["student.arch=vit_huge"])
    cfg = load_config(None, TINY)
    cfg.student.arch = "vit_huge"  # set after loading, past the schema: the builder names it too
    with pytest.raises(ValueError, match="student.arch='vit_huge'.*vit_small"):
        build_model_from_cfg(cfg)
    cfg = load_config(None, TINY)
    cfg.student.ffn_layer = "swiglu3"
    with pytest.raises(ValueError, match="ffn_layer='swiglu3'.*student.ffn_layer"):
        build_model_from_cfg(cfg)
