"""`compile: true` and `student.gradient_checkpointing` on the tiny DINOv2 and SimDINOv2 models (CPU, inductor).

Compiled + checkpointed vs eager: the same losses and gradients (fp32 tolerance) on batches with different
masked-patch counts, and no new graph after the first step (both crop sizes every step).
"""

import pathlib

import pytest
import torch
from batches import make_batches
from torch._dynamo.utils import counters

from dinov2.train.compile import compile_meta_arch
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch

CONFIGS = pathlib.Path(__file__).parents[3] / "configs" / "tiny"


def build(recipe: str, *overrides: str):
    torch.manual_seed(0)
    return build_meta_arch(load_config(CONFIGS / recipe, list(overrides))).train()


def step(model, batch) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    _, metrics = model.forward_backward(batch, 0.07)
    grads = {name: p.grad.clone() for name, p in model.student.named_parameters() if p.grad is not None}
    return metrics, grads


@pytest.mark.parametrize("recipe", ["simdinov2_test.yaml", "dinov2_test.yaml"])
def test_compiled_checkpointed_step_equals_eager_and_stops_compiling(recipe):
    torch._dynamo.reset()
    counters.clear()
    eager = build(recipe)
    compiled = build(recipe, "compile=true", "student.gradient_checkpointing=true")
    compiled.load_state_dict(eager.state_dict())
    assert compiled.student["backbone"].gradient_checkpointing
    limit = compile_meta_arch(compiled)
    batches = make_batches(n_batches=3, n_images=4)
    assert len({int(b["n_masked_patches"]) for b in batches}) > 1, "the batches must vary the masked-patch count"

    graphs_after = []
    for batch in batches:
        expected_metrics, expected_grads = step(eager, batch)
        metrics, grads = step(compiled, batch)
        for name, value in expected_metrics.items():
            torch.testing.assert_close(metrics[name], value, rtol=1e-4, atol=1e-5, msg=name)
        assert grads.keys() == expected_grads.keys() and len(grads) > 10
        for name, grad in expected_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
        graphs_after.append(counters["stats"]["unique_graphs"])

    assert graphs_after[0] > 0, "nothing was compiled"
    assert graphs_after[0] == graphs_after[1] == graphs_after[2], f"recompiled after step 1: {graphs_after}"
    assert graphs_after[-1] <= limit
