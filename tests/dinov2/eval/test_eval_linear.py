import json
import logging

import numpy as np
import pytest
import torch
from eval_cli_args import DIGITS_ARGS, SMALL_IMAGES
from test_eval_knn import load_tool
from torch.utils.data import Dataset

from dinov2.data import make_classification_eval_transform
from dinov2.eval.linear import (
    EvalDataset,
    LinearClassifier,
    LinearEvalSettings,
    build_linear_classifiers,
    classifier_names,
    create_linear_input,
    eval_linear,
)
from dinov2.models import build_model_from_cfg
from dinov2.utils.config import load_config

CPU = torch.device("cpu")


class ColourBlocks(Dataset):
    """Separable toy images: class c is a flat colour (one of 4) plus small noise, [3, 32, 32] tensors."""

    COLOURS = torch.tensor([[1.5, -1.0, -1.0], [-1.0, 1.5, -1.0], [-1.0, -1.0, 1.5], [0.5, 0.5, 0.5]])

    def __init__(self, n_per_class: int, seed: int, fail_after: int | None = None) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(4).repeat(n_per_class)
        noise = 0.3 * torch.randn(len(self.targets), 3, 32, 32, generator=generator)
        self.images = self.COLOURS[self.targets][:, :, None, None] + noise
        self.fail_after = fail_after  # simulate a crash after this many samples were read
        self.reads = 0

    def get_targets(self) -> torch.Tensor:
        return self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError("simulated crash")
        return self.images[index], int(self.targets[index])


@pytest.fixture(scope="module")
def tiny_vit() -> torch.nn.Module:
    cfg = load_config(
        None, ["student.arch=vit_tiny", "student.depth=2", "student.patch_size=8", "student.layerscale=0.1",
               "crops.global_crops_size=32"]
    )  # fmt: skip
    torch.manual_seed(0)
    model, _ = build_model_from_cfg(cfg, only_teacher=True)
    return model.eval()


def test_linear_input_concatenates_last_cls_tokens_then_mean_patch() -> None:
    blocks = [(torch.full((2, 3, 4), float(i)), torch.full((2, 4), 10.0 + i)) for i in range(4)]
    one = create_linear_input(blocks, use_n_blocks=1, use_avgpool=False)
    assert torch.equal(one, torch.full((2, 4), 13.0))
    four = create_linear_input(blocks, use_n_blocks=4, use_avgpool=True)
    expected = torch.cat([torch.full((2, 4), v) for v in (10.0, 11.0, 12.0, 13.0, 3.0)], dim=1)
    assert torch.equal(four, expected) and four.dtype == torch.float32


class ListHandler(logging.Handler):
    """Collects records of one logger directly (robust to other tests' logging set-up, unlike caplog)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_grid_names_follow_the_official_pattern_and_stay_unique() -> None:
    names = [name for name, *_ in classifier_names([1, 4], [False, True], [0.001, 0.05])]
    assert names[0] == "classifier_1_blocks_avgpool_False_lr_0_00100"
    assert names[-1] == "classifier_4_blocks_avgpool_True_lr_0_05000" and len(set(names)) == 8
    # 1e-5 and 2e-5 at B=128, W=1 become 5e-6 and 1e-5: both print 0.00001 at 5 decimals (official drops one)
    handler = ListHandler()
    logging.getLogger("dinov2.eval.linear").addHandler(handler)
    try:
        names = [name for name, *_ in classifier_names([1], [False], [5e-6, 1e-5])]
    finally:
        logging.getLogger("dinov2.eval.linear").removeHandler(handler)
    assert names == [
        "classifier_1_blocks_avgpool_False_lr_5_0000e-06",
        "classifier_1_blocks_avgpool_False_lr_1_0000e-05",
    ]
    assert any("not distinct at 5 decimals" in message for message in handler.messages)
    with pytest.raises(ValueError, match="duplicates"):
        classifier_names([1], [False], [0.1, 0.1])


def test_grid_widths_and_scaled_learning_rates() -> None:
    sample = [(torch.zeros(1, 16, 8), torch.zeros(1, 8)) for _ in range(4)]
    heads, groups = build_linear_classifiers(
        sample, n_last_blocks_list=[1, 4], avgpool_list=[False, True], learning_rates=[1e-3, 1e-2], batch_size=512,
        num_classes=5,
    )  # fmt: skip
    assert len(heads) == 8 and [g["lr"] for g in groups[:2]] == [2e-3, 2e-2]  # lr * 512 / 256
    widths = {name: head.linear.in_features for name, head in heads.classifiers_dict.items()}
    assert widths["classifier_1_blocks_avgpool_False_lr_0_00200"] == 8
    assert widths["classifier_4_blocks_avgpool_True_lr_0_02000"] == 40
    assert all(float(head.linear.bias.detach().abs().sum()) == 0.0 for head in heads.classifiers_dict.values())


def settings_for_toy(**overrides) -> LinearEvalSettings:
    values = dict(
        epochs=4, epoch_length=4, batch_size=16, num_workers=0, save_checkpoint_frequency=2,
        eval_period_iterations=8, learning_rates=(0.0, 4.0), n_last_blocks_list=(1, 2),
    )  # fmt: skip
    values.update(overrides)
    return LinearEvalSettings(**values)


class TwoColours(Dataset):
    """Only the blue (label 0) and red (label 1) images of `ColourBlocks`: model classes 2 and 0."""

    def __init__(self, blocks: ColourBlocks) -> None:
        self.blocks = blocks
        self.indices = [i for i, t in enumerate(blocks.targets.tolist()) if t in (2, 0)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.blocks[self.indices[index]]
        return image, {2: 0, 0: 1}[target]


def test_grid_selects_a_trained_head_on_a_separable_problem(tiny_vit, tmp_path) -> None:
    val = EvalDataset(name="toy-val", dataset=ColourBlocks(8, seed=1))
    mapped = EvalDataset(
        name="toy-test", dataset=TwoColours(ColourBlocks(4, seed=2)), class_mapping=torch.tensor([2, 0])
    )
    results = eval_linear(
        tiny_vit, ColourBlocks(16, seed=0), val, settings=settings_for_toy(), output_dir=str(tmp_path), device=CPU,
        test_datasets=[mapped],
    )  # fmt: skip
    # the test set's labels 0 / 1 are model classes 2 / 0: the mapping selects those two logit columns
    assert results["test"] == {"toy-test": {"top-1": 100.0}}
    accuracies = results["val"]
    assert len(accuracies) == 8  # 2 block counts x 2 avgpool x 2 learning rates
    best = results["best_classifier"]
    assert best["accuracy"] == max(accuracies.values()) == 100.0
    assert accuracies[best["name"]] == best["accuracy"] and not best["name"].endswith("lr_0_00000")
    # lr 0: the heads keep their N(0, 0.01) initialisation and cannot separate the four colours
    assert all(acc < 100.0 for name, acc in accuracies.items() if name.endswith("lr_0_00000"))
    lines = [json.loads(line) for line in (tmp_path / "results_eval_linear.json").read_text().splitlines()]
    # after 8 iterations (the eval period), at the end, then the test set with the selected head
    assert [(line["iter"], line["dataset"]) for line in lines] == [(8, "toy-val"), (16, "toy-val"), (16, "toy-test")]
    saved = torch.load(tmp_path / "best_classifier.pth", weights_only=True)
    head = LinearClassifier(in_dim=saved["in_dim"], num_classes=4, use_n_blocks=saved["use_n_blocks"],
                            use_avgpool=saved["use_avgpool"])  # fmt: skip
    head.load_state_dict(saved["state_dict"])
    assert saved["name"] == best["name"]


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_vit, tmp_path) -> None:
    val = EvalDataset(name="toy-val", dataset=ColourBlocks(2, seed=1))
    settings = settings_for_toy(epochs=3, eval_period_iterations=0, learning_rates=(1.0,), n_last_blocks_list=(1,))
    eval_linear(tiny_vit, ColourBlocks(8, seed=0), val, settings=settings, output_dir=str(tmp_path / "a"), device=CPU)
    # crash during iteration 6 (7th batch of 16): the last running checkpoint is at iteration 3 (epoch length 4)
    crashing = ColourBlocks(8, seed=0, fail_after=6 * 16 + 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        eval_linear(tiny_vit, crashing, val, settings=settings, output_dir=str(tmp_path / "b"), device=CPU)
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "running_checkpoint_linear_eval.pth"
    running = torch.load(tmp_path / "b" / "running_checkpoint_linear_eval.pth", weights_only=False)
    assert running["iteration"] == 3  # the rerun starts at iteration 4, its sampler advanced by 4 * 16 samples
    eval_linear(tiny_vit, ColourBlocks(8, seed=0), val, settings=settings, output_dir=str(tmp_path / "b"), device=CPU)
    final_a = torch.load(tmp_path / "a" / "model_final.pth", weights_only=False)
    final_b = torch.load(tmp_path / "b" / "model_final.pth", weights_only=False)
    assert final_a["iteration"] == final_b["iteration"] == 11
    for key, value in final_a["model"].items():
        torch.testing.assert_close(final_b["model"][key], value, rtol=1e-5, atol=1e-6)
    # (the official advance of 4 samples instead of 4 * 16, or no advance, would replay other batches here)
    torch.testing.assert_close(final_b["optimizer"]["state"][0]["momentum_buffer"],
                               final_a["optimizer"]["state"][0]["momentum_buffer"], rtol=1e-5, atol=1e-6)  # fmt: skip
    # a rerun of the finished run evaluates again and replaces the final line: the files read as one run
    eval_linear(tiny_vit, ColourBlocks(8, seed=0), val, settings=settings, output_dir=str(tmp_path / "b"), device=CPU)
    results = {name: (tmp_path / name / "results_eval_linear.json").read_text().splitlines() for name in ("a", "b")}
    assert [json.loads(line)["iter"] for line in results["b"]] == [json.loads(line)["iter"] for line in results["a"]]
    assert len(results["b"]) == 1


def test_tool_on_digits_trains_saves_and_resumes(tiny_run, tool_process, tmp_path) -> None:
    eval_linear_tool = load_tool("eval_linear")
    argv = [
        *tiny_run.run_args(), *DIGITS_ARGS, *SMALL_IMAGES, "--output-dir", str(tmp_path),
        "--epochs", "2", "--epoch-length", "3", "--batch-size", "64", "--eval-period-iterations", "3",
        "--learning-rates", "0.01", "0.1", "--n-last-blocks", "1", "2",
    ]  # fmt: skip
    results = eval_linear_tool.main(eval_linear_tool.get_args_parser().parse_args(argv))
    # 6 iterations cannot train useful heads (that is the toy test's job): check the bookkeeping
    assert len(results["val"]) == 8 and results["best_classifier"]["accuracy"] == max(results["val"].values())
    lines = [json.loads(line) for line in (tmp_path / "results_eval_linear.json").read_text().splitlines()]
    assert [line["iter"] for line in lines] == [3, 6]
    assert (tmp_path / "best_classifier.pth").is_file() and (tmp_path / "model_final.pth").is_file()
    # a rerun resumes from model_final (iteration 5): no training, the same evaluation
    again = eval_linear_tool.main(eval_linear_tool.get_args_parser().parse_args(argv))
    assert again["val"] == results["val"]
    lines = [json.loads(line) for line in (tmp_path / "results_eval_linear.json").read_text().splitlines()]
    assert [line["iter"] for line in lines] == [3, 6]  # the repeated final evaluation replaced its line


def test_more_blocks_than_the_backbone_has_is_refused(tiny_vit, tmp_path) -> None:
    val = EvalDataset(name="toy-val", dataset=ColourBlocks(1, seed=1))
    with pytest.raises(ValueError, match=r"--n-last-blocks \[1, 4\] asks for more blocks than the backbone's 2"):
        eval_linear(tiny_vit, ColourBlocks(1, seed=0), val, settings=settings_for_toy(n_last_blocks_list=(1, 4)),
                    output_dir=str(tmp_path), device=CPU)  # fmt: skip


def test_train_augmentation_none_trains_on_the_evaluation_view() -> None:
    """`--train-augmentation none` gives the training images the deterministic evaluation transform; the official
    random-resized crops + flips differ from call to call."""
    from PIL import Image

    tool = load_tool("eval_linear")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    flags = ["--arch", "vit_tiny", *DIGITS_ARGS, "--output-dir", "unused", "--resize-size", "32", "--crop-size", "32"]
    plain = tool.make_train_transform(tool.get_args_parser().parse_args([*flags, "--train-augmentation", "none"]))
    reference = make_classification_eval_transform(resize_size=32, crop_size=32)(image)
    torch.testing.assert_close(plain(image), reference, rtol=0, atol=0)
    torch.manual_seed(0)
    augmented = tool.make_train_transform(tool.get_args_parser().parse_args(flags))
    views = [augmented(image) for _ in range(4)]
    assert views[0].shape == reference.shape
    assert any(not torch.equal(view, reference) for view in views) and not torch.equal(views[0], views[1])
