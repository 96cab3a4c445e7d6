"""Backbone construction from the `student` section of a training config."""

import logging
from typing import Any

from omegaconf import DictConfig

from dinov2.models.vision_transformer import ARCHS, DinoVisionTransformer

logger = logging.getLogger(__name__)


def build_model(
    student_cfg: DictConfig, only_teacher: bool = False, img_size: int = 224
) -> tuple[DinoVisionTransformer, DinoVisionTransformer, int] | tuple[DinoVisionTransformer, int]:
    """Build `(student, teacher, embed_dim)` (or `(teacher, embed_dim)`) from the `student` config section.

    Both get `img_size`, `patch_size`, `init_values=layerscale`, `ffn_layer`, `block_chunks`, the biases,
    `num_register_tokens` and the interpolation settings; `depth` overrides the arch's depth when not
    null. Only the student gets `drop_path_rate` / `drop_path_uniform` (the teacher has no drop path) and
    `gradient_checkpointing` (the teacher runs without autograd).
    """
    arch = student_cfg.arch.removesuffix("_memeff")
    if arch not in ARCHS:
        raise ValueError(f"student.arch={student_cfg.arch!r} is not one of {sorted(ARCHS)}; fix student.arch")
    vit_kwargs: dict[str, Any] = dict(
        img_size=img_size,
        patch_size=student_cfg.patch_size,
        init_values=student_cfg.layerscale,
        ffn_layer=student_cfg.ffn_layer,
        block_chunks=student_cfg.block_chunks,
        qkv_bias=student_cfg.qkv_bias,
        proj_bias=student_cfg.proj_bias,
        ffn_bias=student_cfg.ffn_bias,
        num_register_tokens=student_cfg.num_register_tokens,
        interpolate_offset=student_cfg.interpolate_offset,
        interpolate_antialias=student_cfg.interpolate_antialias,
    )
    depth = student_cfg.get("depth")
    if depth is not None:
        vit_kwargs["depth"] = depth
    teacher = ARCHS[arch](**vit_kwargs)
    if only_teacher:
        return teacher, teacher.embed_dim
    student = ARCHS[arch](
        **vit_kwargs,
        drop_path_rate=student_cfg.drop_path_rate,
        drop_path_uniform=student_cfg.drop_path_uniform,
        gradient_checkpointing=student_cfg.gradient_checkpointing,
    )
    logger.info("built %s (depth %d, D %d, patch %d) at img_size %d", arch, student.n_blocks, student.embed_dim,
                student.patch_size, img_size)  # fmt: skip
    return student, teacher, student.embed_dim


def build_model_from_cfg(
    cfg: DictConfig, only_teacher: bool = False
) -> tuple[DinoVisionTransformer, DinoVisionTransformer, int] | tuple[DinoVisionTransformer, int]:
    """`build_model(cfg.student, only_teacher, img_size=cfg.crops.global_crops_size)`."""
    return build_model(cfg.student, only_teacher=only_teacher, img_size=cfg.crops.global_crops_size)
