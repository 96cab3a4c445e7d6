import importlib.util
import json
import math
import pathlib
import sys

import pytest
import torch

from dinov2.eval.knn import knn_accuracies, knn_classify, knn_vote, sample_per_class

CPU = torch.device("cpu")
REPO = pathlib.Path(__file__).resolve().parents[3]


def load_tool(name: str):
    """Import `tools/<name>.py` (the CLIs are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_two_class_weighted_votes_match_hand_computation() -> None:
    # Train set on the unit circle: class 0 at 0 deg and 180 deg, class 1 at 53.13 deg (cos = 0.6) and 90 deg.
    train = torch.tensor([unit(0), [0.6, 0.8], unit(90), unit(180)])
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([unit(0)])  # similarities 1, 0.6, 0, -1
    scores = knn_classify(train, labels, query, ks=[1, 3], temperature=0.5, num_classes=2, batch_size=1, device=CPU)
    # max k = 3 neighbours with sims 1, 0.6, 0 -> weights e^2, e^1.2, e^0 over Z = 7.389056 + 3.320117 + 1.
    z = 7.389056 + 3.320117 + 1.0
    assert torch.allclose(scores[1], torch.tensor([[7.389056 / z, 0.0]]), atol=1e-6)
    # k = 3: the majority (2 of 3) is class 1, but the weighted vote is 0.631 for class 0 vs 0.369 for class 1.
    assert torch.allclose(scores[3], torch.tensor([[7.389056 / z, 4.320117 / z]]), atol=1e-6)
    assert scores[3].argmax().item() == 0
    # at T = 2 the weights flatten (e^0.5, e^0.3, e^0) and the majority wins: class 1 gets (1.349859 + 1) / Z.
    flat = knn_classify(train, labels, query, ks=[3], temperature=2.0, num_classes=2, batch_size=1, device=CPU)
    z2 = 1.648721 + 1.349859 + 1.0
    assert torch.allclose(flat[3], torch.tensor([[1.648721 / z2, 2.349859 / z2]]), atol=1e-6)


def test_vote_weights_are_a_softmax_over_all_max_k_neighbours() -> None:
    sims = torch.tensor([[0.9, 0.8, 0.7]])
    labels = torch.tensor([[2, 0, 2]])
    scores = knn_vote(sims, labels, ks=[2, 3], temperature=0.07, num_classes=3)
    weights = torch.softmax(sims / 0.07, dim=1)[0]
    assert torch.allclose(scores[2][0], torch.stack([weights[1], torch.tensor(0.0), weights[0]]))
    assert torch.allclose(scores[3][0], torch.stack([weights[1], torch.tensor(0.0), weights[0] + weights[2]]))
    assert torch.isclose(scores[3].sum(), torch.tensor(1.0))


def test_accuracies_keys_and_top5_on_a_toy_set() -> None:
    generator = torch.Generator().manual_seed(0)
    centers = torch.nn.functional.normalize(torch.randn(6, 16, generator=generator), dim=1)
    labels = torch.arange(6).repeat_interleave(10)
    train = torch.nn.functional.normalize(centers[labels] + 0.05 * torch.randn(60, 16, generator=generator), dim=1)
    results = knn_accuracies(train, labels, train, labels, nb_knn=[1, 5], device=CPU)
    assert set(results) == {f"('full', {k}) Top {t}" for k in (1, 5) for t in (1, 5)}
    assert results["('full', 1) Top 1"] == 100.0 and results["('full', 5) Top 5"] == 100.0


def test_few_shot_subsets_are_per_class_and_seeded() -> None:
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 4)
    first = sample_per_class(labels, 3, seed=0)
    assert torch.equal(torch.bincount(labels[first]), torch.tensor([3, 3, 3]))
    assert torch.equal(first, sample_per_class(labels, 3, seed=0))
    assert not torch.equal(first, sample_per_class(labels, 3, seed=1))
    with pytest.raises(ValueError, match="class 2 has 4"):
        sample_per_class(labels, 5, seed=0)
    features = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    results = knn_accuracies(
        features, labels, features, labels, nb_knn=[1, 10], n_per_class_list=[-1, 2], n_tries=2, device=CPU
    )
    # n = 2 per class: k in {1, 10, 2} restricted to k <= 2 -> 1 and 2; the full set uses k = 1 and 10.
    assert {key for key in results if key.startswith("(2,")} == {"(2, 1) Top 1", "(2, 2) Top 1"}
    assert "('full', 10) Top 1" in results and results["('full', 1) Top 1"] == 100.0


def test_k_larger_than_the_train_set_is_refused() -> None:
    features = torch.eye(3)
    with pytest.raises(ValueError, match="k=200 exceeds the 3 train samples"):
        knn_classify(features, torch.arange(3), features, ks=[1, 200], temperature=0.07, num_classes=3,
                     batch_size=4, device=CPU)  # fmt: skip


def test_tool_on_digits_identical_train_and_val_is_exact(tiny_run, tool_process, tmp_path) -> None:
    eval_knn = load_tool("eval_knn")
    args = eval_knn.get_args_parser().parse_args(
        [
            *tiny_run.run_args(),
            "--train-dataset", "Digits:split=VAL", "--val-dataset", "Digits:split=VAL",
            "--output-dir", str(tmp_path), "--nb_knn", "1", "10",
            "--resize-size", "32", "--crop-size", "32", "--num-workers", "0", "--batch-size", "500",
        ]
    )  # fmt: skip
    results = eval_knn.main(args)
    # every val feature is its own nearest train feature (similarity 1): top-1 of 1-NN is exactly 100 %
    assert results["('full', 1) Top 1"] == 100.0
    assert results["('full', 10) Top 5"] >= results["('full', 10) Top 1"] > 10.0
    written = [json.loads(line) for line in (tmp_path / "results_eval_knn.json").read_text().splitlines()]
    assert written == [results]


def test_raw_digit_pixels_reproduce_the_anchor_measurement() -> None:
    """Golden value: the official DINOv2 k-NN code gives 97.7 % for weighted k-NN (cosine, k = 20, exp(s / 0.07)) on
    the raw 8x8 pixels of scikit-learn's digits, stratified split test_size=397, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.images, digits.target, test_size=397, random_state=0, stratify=digits.target
    )

    def features(images) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.tensor(images.reshape(len(images), -1), dtype=torch.float32), dim=1)

    results = knn_accuracies(
        features(x_train), torch.tensor(y_train), features(x_val), torch.tensor(y_val), nb_knn=[20], device=CPU
    )
    assert round(results["('full', 20) Top 1"], 1) == 97.7  # 388 of 397
