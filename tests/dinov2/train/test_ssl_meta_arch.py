import pathlib

import pytest
import torch
import torch.nn.functional as F
from batches import make_batches, select_images

from dinov2.loss import sinkhorn_knopp
from dinov2.train.ssl_meta_arch import SSLMetaArch, effective_rank
from dinov2.utils.config import load_config

TINY = pathlib.Path(__file__).parents[3] / "configs" / "tiny" / "dinov2_test.yaml"


def build(*overrides: str) -> SSLMetaArch:
    torch.manual_seed(0)
    model = SSLMetaArch(load_config(TINY, list(overrides)))
    return model.train()


def cross_entropy(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits / 0.1, dim=-1)).sum(-1)  # [N]


def test_forward_backward_matches_the_official_loss_formulas():
    model = build("train.centering=sinkhorn_knopp")
    batch = make_batches(n_batches=1, n_images=4)[0]
    teacher = model.teacher_targets(batch, teacher_temp=0.05)
    student = model.student_forward(batch)
    terms, _ = model.compute_losses(student=student, teacher=teacher, batch=batch)

    # The teacher targets are Sinkhorn-Knopp of the teacher head on the *unmasked* global crops.
    with torch.no_grad():
        cls = model.teacher["backbone"](batch["collated_global_crops"], is_training=True)["x_norm_clstoken"]
        expected = sinkhorn_knopp(model.teacher["dino_head"](cls), 0.05).unflatten(0, (2, 4))
    torch.testing.assert_close(teacher["teacher_cls_targets"], expected)

    # DINO: mean of the T = 2 L + 2 cross-view cross-entropies (teacher crop i, student crop != i).
    t, s_global, s_local = (
        teacher["teacher_cls_targets"],
        student["student_global_logits"],
        student["student_local_logits"],
    )
    pairs = [cross_entropy(t[i], s_global[1 - i]).mean() for i in range(2)]
    pairs += [cross_entropy(t[i], s_local[j]).mean() for i in range(2) for j in range(s_local.shape[0])]
    assert len(pairs) == 6
    dino_total = terms["dino_local_crops_loss"] + terms["dino_global_crops_loss"]
    torch.testing.assert_close(dino_total, torch.stack(pairs).mean())
    torch.testing.assert_close(terms["dino_global_crops_loss"], torch.stack(pairs[:2]).sum() / 6)

    # iBOT: per-crop mean CE over its masked patches, averaged over all 2B global crops.
    masks = batch["collated_masks"]
    ce = cross_entropy(teacher["teacher_patch_targets"], student["student_masked_patch_logits"])
    crop_of_patch = batch["mask_indices_list"] // masks.shape[1]
    per_crop = [ce[crop_of_patch == c].mean() for c in range(masks.shape[0]) if masks[c].any()]
    torch.testing.assert_close(terms["ibot_loss"], torch.stack(per_crop).sum() / masks.shape[0])


def test_one_cpu_step_trains_the_student_only():
    model = build()
    batch = make_batches(n_batches=1, n_images=4)[0]
    total, metrics = model.forward_backward(batch, 0.05, compute_feature_stats=True)
    expected_total = sum(model.loss_weights[name] * metrics[name] for name in model.loss_weights)
    torch.testing.assert_close(total, expected_total)
    assert set(metrics) == {*model.loss_weights, "total_loss", "teacher_cls_effective_rank"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert 1.0 <= metrics["teacher_cls_effective_rank"].item() <= 8.0


def test_teacher_ema_on_parameters():
    model = build()
    for p in model.student.parameters():
        p.data.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.update_teacher(0.75)
    for t_before, t, s in zip(before, model.teacher.parameters(), model.student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * t_before + 0.25 * s)


def test_grad_accumulation_equals_the_big_batch():
    batch = make_batches(n_batches=1, n_images=8)[0]
    big = build("dino.koleo_loss_weight=0")
    _, big_metrics = big.forward_backward(batch, 0.05)
    accumulated = build("dino.koleo_loss_weight=0")
    micro_metrics = []
    for micro, images in enumerate([[0, 1, 2, 3], [4, 5, 6, 7]]):
        _, metrics = accumulated.forward_backward(
            select_images(batch, images), 0.05, loss_scale=0.5, update_centers=micro == 1
        )
        micro_metrics.append(metrics)
    for name in big_metrics:
        torch.testing.assert_close((micro_metrics[0][name] + micro_metrics[1][name]) / 2, big_metrics[name])
    for (name, p_big), p_acc in zip(big.student.named_parameters(), accumulated.student.parameters(), strict=True):
        torch.testing.assert_close(p_acc.grad, p_big.grad, rtol=1e-4, atol=1e-6, msg=name)
    # one centre update per accumulated step, from the teacher outputs of all micro-batches
    for model in (big, accumulated):
        model.apply_center_updates()
    torch.testing.assert_close(accumulated.dino_loss.center, big.dino_loss.center)
    torch.testing.assert_close(accumulated.ibot_patch_loss.center, big.ibot_patch_loss.center)
    assert big.dino_loss.center.abs().sum() > 0


def test_centering_none_uses_raw_head_outputs():
    model = build("train.centering=none")
    batch = make_batches(n_batches=1, n_images=2)[0]
    teacher = model.teacher_targets(batch, teacher_temp=0.05)
    with torch.no_grad():
        cls = model.teacher["backbone"](batch["collated_global_crops"], is_training=True)["x_norm_clstoken"]
        torch.testing.assert_close(teacher["teacher_cls_targets"].flatten(0, 1), model.teacher["dino_head"](cls))


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="train.centering"):
        build("train.centering=sinkorn")
    with pytest.raises(ValueError, match="ibot.mask_sample_probability"):
        build("ibot.mask_sample_probability=0")
    with pytest.raises(ValueError, match="param_dtype"):
        build("compute_precision.student.backbone.mixed_precision.param_dtype=fp8")
    with pytest.raises(ValueError, match="compute_precision.teacher.dino_head.sharding_strategy='SHARD_GRAD_OP'"):
        build("compute_precision.student.dino_head.sharding_strategy=NO_SHARD")


def test_ibot_only_builds_the_shared_head():
    # FIX: official DINOv2 crashes when DINO is off and iBOT on.
    model = build("dino.loss_weight=0")
    _, metrics = model.forward_backward(make_batches(n_batches=1, n_images=2)[0], 0.05)
    assert set(metrics) == {"ibot_loss", "total_loss"}
    assert "dino_head" in model.student


def test_effective_rank_detects_collapse():
    assert effective_rank(torch.ones(16, 8)).item() == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.eye(8)).item() == pytest.approx(8.0, abs=1e-4)


def test_single_process_mixed_precision_autocasts_per_submodule():
    key = "compute_precision.student.backbone.mixed_precision"
    model = build(f"{key}.param_dtype=bf16", f"{key}.reduce_dtype=bf16")
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            dtypes.setdefault(name, output.dtype)

        return hook

    model.student["backbone"].blocks[0].attn.qkv.register_forward_hook(record("student_backbone"))
    model.teacher["backbone"].blocks[0].attn.qkv.register_forward_hook(record("teacher_backbone"))
    model.student["dino_head"].mlp[0].register_forward_hook(record("student_head"))
    total, _ = model.forward_backward(make_batches(n_batches=1, n_images=2)[0], 0.05)
    assert dtypes == {"student_backbone": torch.bfloat16, "teacher_backbone": torch.float32,
                      "student_head": torch.float32}  # fmt: skip
    assert torch.isfinite(total)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.student.parameters())


def test_fp16_uses_the_grad_scaler_and_skips_overflowing_steps():
    from dinov2.train.train import apply_optim_scheduler, build_optimizer, clip_and_step, get_params_groups

    keys = [f"compute_precision.student.{key}.mixed_precision.param_dtype=fp16" for key in ("backbone", "dino_head")]
    model = build(*keys, "compute_precision.grad_scaler=true")
    model.build_grad_scaler(torch.device("cpu"))
    assert isinstance(model.grad_scaler, torch.amp.GradScaler)
    optimizer = build_optimizer(model.cfg, get_params_groups(model))
    apply_optim_scheduler(optimizer, lr=1e-3, wd=0.04, last_layer_lr=1e-3)
    before = [p.detach().clone() for p in model.student.parameters()]
    scales = []
    for _ in range(40):  # the initial scale 2**16 overflows fp16 gradients: steps are skipped, the scale halves
        optimizer.zero_grad(set_to_none=True)
        model.forward_backward(make_batches(n_batches=1, n_images=2)[0], 0.05)
        norms = clip_and_step(model, optimizer, 3.0)
        scales.append(model.grad_scaler.get_scale())
        if all(torch.isfinite(torch.tensor(list(norms.values())))):
            break
    assert scales[0] == 2.0**15 and scales[-1] < 2.0**16
    changed = [not torch.equal(b, p) for b, p in zip(before, model.student.parameters(), strict=True)]
    assert any(changed), "a finite step must update the student"
    assert build().grad_scaler is None  # fp32: no scaler
