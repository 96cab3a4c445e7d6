"""Every classification tool refuses a checkpoint that does not match the model it builds.

Upstream loads with `strict=False` and reports near-chance accuracy instead; here the shared loader raises
`CheckpointMismatchError` naming the mismatch, and the tools let it through before any data is read.
"""

import pytest
import torch
from test_eval_knn import load_tool

from dinov2.eval.setup import backbone_from_args
from dinov2.utils.checkpoint import CheckpointMismatchError

TOOLS = ["eval_knn", "eval_linear", "eval_logreg"]
# datasets that would fail if they were ever built: the refusal must come first
DATA_ARGS = ["--train-dataset", "ImageFolder:root=/nonexistent", "--val-dataset", "ImageFolder:root=/nonexistent"]


def with_flag(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


def mismatch_case(kind: str, tiny_run, tmp_path) -> tuple[list[str], str]:
    """(backbone flags, expected message fragment) for one kind of mismatch."""
    if kind == "patch_size":  # the checkpoint has 8x8 patches; the model is built with 4x4
        return with_flag(tiny_run.hub_args(), "--patch-size", "4"), "patch size: checkpoint 8, model 4"
    if kind == "registers":
        return [*tiny_run.hub_args(), "--num-register-tokens", "4"], "register tokens: checkpoint 0, model 4"
    if kind == "embedding_size":  # ViT-S is 384 wide, the checkpoint (ViT-Ti) 192
        return with_flag(tiny_run.hub_args(), "--arch", "vit_small"), "embedding size: checkpoint 192, model 384"
    state = dict(tiny_run.state_dict)
    if kind == "missing_keys":
        del state["norm.weight"]
        expected = r"missing keys \(1\): norm.weight"
    else:  # unexpected keys: a third block that the 2-block model does not have
        for key, value in tiny_run.state_dict.items():
            if key.startswith("blocks.1."):
                state["blocks.2." + key[len("blocks.1.") :]] = value
        expected = r"unexpected keys \(\d+\): blocks.2."
    path = tmp_path / f"{kind}.pth"
    torch.save({"teacher": {f"backbone.{key}": value for key, value in state.items()}}, path)
    return ["--config-file", str(tiny_run.config_file), "--pretrained-weights", str(path)], expected


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("kind", ["patch_size", "registers", "embedding_size", "missing_keys", "unexpected_keys"])
def test_tools_refuse_mismatched_checkpoints(kind, tool, tiny_run, tool_process, tmp_path) -> None:
    module = load_tool(tool)
    backbone_args, expected = mismatch_case(kind, tiny_run, tmp_path)
    args = module.get_args_parser().parse_args([*backbone_args, *DATA_ARGS, "--output-dir", str(tmp_path / "out")])
    with pytest.raises(CheckpointMismatchError, match=expected) as error:
        module.main(args)
    assert "nothing was loaded" in str(error.value)


def test_hub_flags_select_the_matching_model(tiny_run) -> None:
    """The flags used above do build the checkpoint's model when nothing is changed (no false refusals)."""
    module = load_tool("eval_knn")
    for backbone_args in (tiny_run.hub_args(), tiny_run.run_args()):
        args = module.get_args_parser().parse_args([*backbone_args, *DATA_ARGS, "--output-dir", "x"])
        model = backbone_from_args(args)
        for key, value in model.state_dict().items():
            assert torch.equal(value, tiny_run.state_dict[key]), key
