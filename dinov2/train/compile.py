"""`compile: true`: torch.compile what actually runs in a training step, per FSDP unit.

Compiled (in place, `nn.Module.compile`, so state-dict keys and FSDP wrapping are unchanged):

* every element of `student.backbone.blocks` and `teacher.backbone.blocks` (one block, or one BlockChunk
  with `student.block_chunks > 0`): the same units that `dinov2.fsdp.shard_submodule` shards, so each
  compiled region sits between one unit's all-gather and its reduce-scatter;
* the loss modules the step calls: `dino_loss` and `koleo_loss` (`__call__`) and the masked-patch loss
  (`ibot_patch_loss.forward_masked`, which `nn.Module.compile` would not reach).

Shapes: blocks are compiled with static shapes. Within a run the crop shapes never change (the loader drops
the last incomplete batch), so a block sees exactly two input signatures: the student's
[global tokens, local tokens] list and the teacher's global tokens. The patch loss sees a different number
of masked patches every step, so it is compiled with dynamic shapes from the start (one graph with a
symbolic row count). Call `compile_meta_arch` before sharding (activation checkpointing,
set in the model, comes first, then compile, then FSDP).

Recompiles are bounded: blocks that differ in a specialised attribute (the drop-path rate of a linear
drop-path schedule) need one graph each, so the recompile limit is raised to cover every unit, and hitting
the limit raises instead of silently running eagerly.
"""

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Graphs per compiled unit: student (list of two crop sizes, training) and teacher (one tensor, eval).
GRAPHS_PER_BLOCK_UNIT = 2
# Loss graphs: DINO/MCR, KoLeo, the patch loss, and one spare for a graph break inside a loss.
LOSS_GRAPHS = 4


def compile_meta_arch(model: nn.Module, backend: str = "inductor") -> int:
    """Compile the backbone blocks and the losses of an `SSLMetaArch` in place (see the module docstring).

    `backend` is torch.compile's (training uses inductor; benchmarks/gpu_check.py --tiny uses aot_eager to
    exercise the same tracing on CPU without code generation).

    Returns the recompile limit set (`torch._dynamo.config.recompile_limit`), the bound on graphs per code
    object.
    """
    n_units = 0
    for modules in (model.student, model.teacher):
        for unit in modules["backbone"].blocks:
            unit.compile(dynamic=False, backend=backend)
            n_units += 1
    for name in ("dino_loss", "koleo_loss"):
        loss = getattr(model, name, None)
        if loss is not None:
            loss.compile(backend=backend)
    patch_loss = getattr(model, "ibot_patch_loss", None)
    if patch_loss is not None:
        patch_loss.forward_masked = torch.compile(patch_loss.forward_masked, dynamic=True, backend=backend)
    limit = max(torch._dynamo.config.recompile_limit, GRAPHS_PER_BLOCK_UNIT * n_units + LOSS_GRAPHS)
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    logger.info("OPTIONS -- compile: %d backbone block units and the losses (recompile limit %d)", n_units, limit)
    return limit
