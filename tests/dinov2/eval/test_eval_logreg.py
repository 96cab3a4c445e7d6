import json

import numpy as np
import pytest
import torch
from eval_cli_args import DIGITS_ARGS, SMALL_IMAGES
from test_eval_knn import load_tool

from dinov2.eval.log_regression import DEFAULT_C_VALUES, eval_log_regression, resolve_backend, split_selection_set


def imbalanced_blobs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs in 8-D with 60 / 20 / 20 % of the samples."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * 60 + [1] * 20 + [2] * 20)
    centers = 4.0 * torch.eye(3, 8)
    return centers[labels] + 0.3 * torch.randn(100, 8, generator=generator), labels


def test_official_c_grid() -> None:
    assert len(DEFAULT_C_VALUES) == 45
    assert DEFAULT_C_VALUES[0] == pytest.approx(1e-6) and DEFAULT_C_VALUES[-1] == pytest.approx(1e5)
    assert DEFAULT_C_VALUES[1] / DEFAULT_C_VALUES[0] == pytest.approx(10 ** (11 / 44))


def test_separable_toy_set_selects_the_weakly_regularised_model() -> None:
    train_x, train_y = imbalanced_blobs(0)
    val_x, val_y = imbalanced_blobs(1)
    # C = 1e-6 shrinks the weights to ~0: only the (unpenalised) intercept is left and every sample gets the
    # majority class (60 % on the selection split); C = 1 separates the blobs.
    results = eval_log_regression(train_x, train_y, val_x, val_y, c_values=[1e-6, 1.0], backend="sklearn")
    assert results["best_C"] == 1.0
    assert results["top-1"] == 100.0
    assert "top-5" not in results  # 3 classes: top-5 is not defined
    majority = eval_log_regression(train_x, train_y, val_x, val_y, c_values=[1e-6], backend="sklearn")
    assert majority["top-1"] == pytest.approx(60.0)


def test_selection_split_is_a_seeded_ten_percent() -> None:
    fit, selection = split_selection_set(100)
    assert len(selection) == 10 and len(fit) == 90
    assert set(fit.tolist()) | set(selection.tolist()) == set(range(100))
    assert torch.equal(selection, split_selection_set(100)[1])
    with pytest.raises(ValueError, match="empty"):
        split_selection_set(5)


def test_bad_choices_name_the_flag() -> None:
    x, y = imbalanced_blobs(0)
    with pytest.raises(ValueError, match="--metric-type"):
        eval_log_regression(x, y, x, y, metric_type="top_one")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass only one"):
        eval_log_regression(x, y, x, y, finetune=(x, y), finetune_on_val=True)
    with pytest.raises(ValueError, match="--backend"):
        resolve_backend("gpu")


def test_tool_on_digits_hub_weights(tiny_run, tool_process, tmp_path) -> None:
    eval_logreg = load_tool("eval_logreg")
    argv = [*tiny_run.hub_args(), *DIGITS_ARGS, *SMALL_IMAGES, "--output-dir", str(tmp_path),
            "--autocast-dtype", "fp32", "--c-values", "0.01", "1.0", "--max-train-iters", "50"]  # fmt: skip
    results = eval_logreg.main(eval_logreg.get_args_parser().parse_args(argv))
    assert results["best_C"] in (0.01, 1.0)
    assert 10.0 < results["top-1"] <= results["top-5"] <= 100.0
    written = json.loads((tmp_path / "results_eval_log_regression.json").read_text())
    assert np.isclose(written["top-1"], results["top-1"])


def test_c_can_be_chosen_on_a_finetune_set_or_on_val() -> None:
    train_x, train_y = imbalanced_blobs(0)
    val_x, val_y = imbalanced_blobs(1)
    finetune = imbalanced_blobs(2)
    on_finetune = eval_log_regression(
        train_x, train_y, val_x, val_y, finetune=finetune, c_values=[1e-6, 1.0], backend="sklearn"
    )
    on_val = eval_log_regression(train_x, train_y, val_x, val_y, finetune_on_val=True, c_values=[1e-6, 1.0],
                                 backend="sklearn")  # fmt: skip
    assert on_finetune["best_C"] == on_val["best_C"] == 1.0
    assert on_finetune["top-1"] == on_val["top-1"] == 100.0
