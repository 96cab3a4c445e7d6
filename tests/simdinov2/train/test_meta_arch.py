"""SimDINOMetaArch on a tiny ViT on CPU: eq. 17 with the official call conventions, metrics, export, Table 8."""

import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from batches import make_batches

from dinov2.train.checkpointer import Checkpointer, export_teacher
from dinov2.train.train import get_args_parser, main
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch
from simdinov2.train.meta_arch import SimDINOMetaArch

TINY = pathlib.Path(__file__).parents[3] / "configs" / "tiny" / "simdinov2_test.yaml"
OFFICIAL_METRICS = {"dino_mcr_loss", "dino_mcr_comp_loss", "dino_mcr_global_comp_loss", "dino_mcr_expa_loss",
                    "ibot_comp_loss", "total_loss"}  # fmt: skip
DIAGNOSTICS = {"dino_mcr_effective_eps", "dino_mcr_cholesky_fallbacks", "teacher_cls_effective_rank"}


def build(*overrides: str) -> SimDINOMetaArch:
    torch.manual_seed(0)
    model = build_meta_arch(load_config(TINY, list(overrides)))
    assert isinstance(model, SimDINOMetaArch)
    return model.train()


def test_losses_follow_eq_17_with_the_official_view_lists():
    model = build()
    batch = make_batches(n_batches=1, n_images=4)[0]
    teacher = model.teacher_targets(batch, teacher_temp=0.07)
    student = model.student_forward(batch)
    terms, diagnostics = model.compute_losses(student=student, teacher=teacher, batch=batch)

    # Teacher targets: the l2-normalised head outputs of the *unmasked* global crops, in crop order (not swapped).
    with torch.no_grad():
        out = model.teacher["backbone"](batch["collated_global_crops"], is_training=True)
        cls_features = model.teacher["dino_head"](out["x_norm_clstoken"]).unflatten(0, (2, 4))
    torch.testing.assert_close(teacher["teacher_cls_features"], cls_features)
    torch.testing.assert_close(teacher["teacher_cls_features"].norm(dim=-1), torch.ones(2, 4))

    # CLS: -(mean cosine over the (teacher i, student j != i) pairs) - gamma * mean_v R_v, with
    # R_v = 1/2 logdet(I + p/(m eps) Z_vᵀ Z_v), Z_v = (student global v + teacher v) / 2 (expa_type 1).
    t = teacher["teacher_cls_features"].double()
    s = torch.cat([student["student_global_logits"], student["student_local_logits"]]).double()  # [2 + L, B, p]
    pairs = [(t[i] * s[j]).sum(-1).mean() for i in range(2) for j in range(s.shape[0]) if j != i]
    assert len(pairs) == 2 * 4 - 2
    p, m, eps = s.shape[-1], s.shape[1], 0.05
    rates = [0.5 * torch.logdet(torch.eye(p, dtype=torch.float64) + p / (m * eps) * z.T @ z)
             for z in ((s[:2] + t) / 2)]  # fmt: skip
    gamma = (p + m) / (p * m)
    expected_cls = -torch.stack(pairs).mean() - gamma * torch.stack(rates).mean()
    torch.testing.assert_close(terms["dino_mcr_loss"].double(), expected_cls, rtol=1e-5, atol=1e-6)
    comp = torch.stack(pairs).mean()
    torch.testing.assert_close(diagnostics["dino_mcr_comp_loss"].double(), comp, rtol=1e-5, atol=1e-6)
    global_pairs = ((t[0] * s[1]).sum(-1).mean() + (t[1] * s[0]).sum(-1).mean()) / 2
    torch.testing.assert_close(diagnostics["dino_mcr_global_comp_loss"].double(), global_pairs, rtol=1e-5, atol=1e-6)

    # Patches: -(per-crop mean cosine over its masked patches), averaged over all 2B global crops.
    masks = batch["collated_masks"]
    cosine = F.cosine_similarity(student["student_masked_patch_logits"], teacher["teacher_patch_features"], dim=-1)
    crop_of_patch = batch["mask_indices_list"] // masks.shape[1]
    per_crop = [cosine[crop_of_patch == c].mean() for c in range(masks.shape[0]) if masks[c].any()]
    assert len(per_crop) >= 1
    torch.testing.assert_close(terms["ibot_comp_loss"], -torch.stack(per_crop).sum() / masks.shape[0])


def test_one_cpu_forward_backward_is_finite_with_the_official_metrics():
    model = build()
    batch = make_batches(n_batches=1, n_images=4)[0]
    total, metrics = model.forward_backward(batch, 0.07, compute_feature_stats=True)
    assert set(metrics) == OFFICIAL_METRICS | DIAGNOSTICS
    assert all(math.isfinite(float(value)) for value in metrics.values())
    torch.testing.assert_close(total, metrics["dino_mcr_loss"] + metrics["ibot_comp_loss"])
    assert float(metrics["dino_mcr_effective_eps"]) == pytest.approx(0.05)
    assert float(metrics["dino_mcr_cholesky_fallbacks"]) == 0.0
    for key in ("backbone", "dino_head"):
        grads = [p.grad for p in model.student[key].parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), key
        assert all(p.grad is None for p in model.teacher[key].parameters()), key


def test_mcr_eps_and_coeff_come_from_the_config():
    base = build()
    other = build("dino.mcr.eps=0.5", "dino.mcr.coeff=0.25")
    batch = make_batches(n_batches=1, n_images=4)[0]
    _, metrics = base.forward_backward(batch, 0.07)
    _, other_metrics = other.forward_backward(batch, 0.07)
    assert float(other_metrics["dino_mcr_effective_eps"]) == pytest.approx(0.5)
    # same weights (same seed), so comp is equal and only the weighting and the rate change
    torch.testing.assert_close(other_metrics["dino_mcr_comp_loss"], metrics["dino_mcr_comp_loss"])
    expected = -0.25 * other_metrics["dino_mcr_comp_loss"] - other_metrics["dino_mcr_expa_loss"]
    torch.testing.assert_close(other_metrics["dino_mcr_loss"], expected)
    assert float(other_metrics["dino_mcr_expa_loss"]) < float(metrics["dino_mcr_expa_loss"])  # larger eps, lower rate


def test_teacher_export_has_only_backbone_and_mlp_keys(tmp_path):
    model = build()
    path = tmp_path / "teacher_checkpoint.pth"
    export_teacher(model, path)
    keys = set(torch.load(path, weights_only=True)["teacher"])
    assert keys == set(model.teacher.state_dict())
    assert all(key.startswith("backbone.") or key.startswith("dino_head.mlp.") for key in keys), sorted(keys)
    assert {f"dino_head.mlp.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")} <= keys
    assert not any("last_layer" in key or "center" in key for key in keys)


@pytest.fixture(scope="module")
def no_self_distillation_run(tmp_path_factory) -> pathlib.Path:
    """The real training loop, 4 steps on Digits, with teacher = student at every step (paper Table 8)."""
    output_dir = tmp_path_factory.mktemp("no_self_distillation")
    argv = ["--config-file", str(TINY), "--output-dir", str(output_dir), "--no-resume", "optim.epochs=2",
            "teacher.momentum_teacher=0", "teacher.final_momentum_teacher=0",
            "evaluation.eval_period_iterations=4"]  # fmt: skip
    main(get_args_parser().parse_args(argv), meta_arch_factory=build_meta_arch)
    return output_dir


def test_no_self_distillation_keeps_the_teacher_equal_to_the_student(no_self_distillation_run):
    cfg = load_config(no_self_distillation_run / "config.yaml")
    model = build()
    initial = {name: value.clone() for name, value in model.student.state_dict().items()}
    Checkpointer(output_dir=no_self_distillation_run, model=model, optimizer=None, max_to_keep=2).load(
        str(no_self_distillation_run / "checkpoints" / "model_final"), model_only=True
    )
    assert cfg.teacher.momentum_teacher == 0
    student, teacher = model.student.state_dict(), model.teacher.state_dict()
    assert set(student) == set(teacher)
    for name, value in student.items():
        assert torch.equal(teacher[name], value), name
    assert any(not torch.equal(initial[name], value) for name, value in student.items()), "the student never moved"


def test_training_log_has_the_official_metric_names(no_self_distillation_run):
    lines = (no_self_distillation_run / "training_metrics.json").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["iteration"] for record in records] == [0, 1, 2, 3]
    assert OFFICIAL_METRICS | DIAGNOSTICS <= set(records[0])
    assert all(math.isfinite(record["total_loss"]) for record in records)
    path = no_self_distillation_run / "eval" / "training_3" / "teacher_checkpoint.pth"
    exported = torch.load(path, weights_only=True)
    assert {key.split(".")[0] for key in exported["teacher"]} == {"backbone", "dino_head"}
