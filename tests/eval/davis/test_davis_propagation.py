"""Label propagation: frame sizing, the affinity / window / top-k step, the context queue, tracking."""

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from davis_synthetic import ColourClassBackbone, PositionTextureBackbone, Video, translating_objects_video
from PIL import Image

from dinov2.models.vision_transformer import vit_tiny
from eval.davis import propagation
from eval.davis.evaluation import evaluate_results
from eval.davis.layout import read_label_map, write_label_map
from eval.davis.propagation import (
    PropagationConfig,
    extract_patch_features,
    first_frame_labels,
    neighborhood_mask,
    propagate_labels,
    read_frame,
    resized_frame_size,
    run_label_propagation,
    soft_labels_to_index_map,
)

CPU = torch.device("cpu")


def test_resized_frame_size() -> None:
    assert resized_frame_size(480, 854) == (480, 832)
    assert resized_frame_size(854, 480) == (832, 480)
    assert resized_frame_size(480, 910) == (480, 896)
    assert resized_frame_size(480, 1152) == (480, 1152)
    assert resized_frame_size(96, 160, short_side=96) == (96, 128)


def test_read_frame_normalises_and_cuts_to_the_patch_grid(tmp_path: Path) -> None:
    Image.fromarray(np.full((480, 854, 3), (255, 0, 128), dtype=np.uint8)).save(tmp_path / "f.png")
    frame, size = read_frame(tmp_path / "f.png", patch_size=14)
    assert size == (480, 854)
    assert frame.shape == (3, 476, 826)  # 480x832 cut to multiples of 14
    expected = [(1 - 0.485) / 0.228, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]  # RGB order, DINO std
    torch.testing.assert_close(frame.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)


def test_first_frame_labels_one_hot_and_void() -> None:
    annotation = np.zeros((48, 64), dtype=np.uint8)
    annotation[:24, :32] = 2
    annotation[24:, 32:] = 255
    labels = first_frame_labels(annotation, (6, 8))
    assert labels.shape == (3, 6, 8)
    assert torch.equal(labels.sum(0), torch.ones(6, 8))
    assert torch.equal(labels[2], torch.tensor(np.array(Image.fromarray(annotation).resize((8, 6), 0)) == 2).float())
    assert labels[0, 5, 7] == 1  # void became background


def test_neighborhood_mask_matches_loops() -> None:
    height, width, radius = 4, 5, 1
    expected = torch.zeros(height, width, height, width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            for k in range(max(0, i - radius), min(height, i + radius + 1)):
                for m in range(max(0, j - radius), min(width, j + radius + 1)):
                    expected[i, j, k, m] = True
    assert torch.equal(neighborhood_mask(height, width, radius), expected.reshape(height * width, height * width))


def reference_propagation(target, context, labels, topk, temperature, mask):
    """DINO's arrangement: per-context [Pq, Ps] affinities, stacked as [N·Ps, Pq], top-k down the columns."""
    n_context, n_patches, _ = context.shape
    affinity = torch.exp(torch.bmm(target[None].repeat(n_context, 1, 1), context.transpose(1, 2)) / temperature)
    if mask is not None:
        affinity = affinity * mask[None].float()
    affinity = affinity.transpose(2, 1).reshape(-1, n_patches)  # [N·Ps, Pq]
    kth = torch.topk(affinity, dim=0, k=topk).values.min(dim=0).values
    affinity[affinity < kth] = 0
    affinity = affinity / affinity.sum(dim=0, keepdim=True)
    sources = labels.transpose(2, 1).reshape(-1, labels.shape[1]).T  # [C, N·Ps]
    return sources @ affinity


@pytest.mark.parametrize(("radius", "topk"), [(0, 5), (2, 5), (1, 1), (3, 17)])
def test_propagate_labels_matches_dino_arrangement(radius: int, topk: int) -> None:
    generator = torch.Generator().manual_seed(radius * 10 + topk)
    height, width, n_context, n_classes = 5, 6, 3, 4
    target = F.normalize(torch.randn(height * width, 8, generator=generator), dim=-1)
    context = F.normalize(torch.randn(n_context, height * width, 8, generator=generator), dim=-1)
    labels = torch.softmax(torch.randn(n_context, n_classes, height * width, generator=generator), dim=1)
    mask = neighborhood_mask(height, width, radius) if radius else None
    result = propagate_labels(target, context, labels, topk=topk, temperature=0.1, neighborhood=mask)
    torch.testing.assert_close(result, reference_propagation(target, context, labels, topk, 0.1, mask))
    torch.testing.assert_close(result.sum(0), torch.ones(height * width))


def test_topk_is_joint_over_context_and_keeps_ties() -> None:
    # Two context frames; target patch 0 matches source 1 of frame 0 and source 0 of frame 1 equally well.
    target = torch.tensor([[1.0, 0.0]])
    context = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])  # [N=2, C=2, P=2]
    target = torch.cat([target, torch.tensor([[0.0, 1.0]])])
    result = propagate_labels(target, context, labels, topk=1, temperature=0.1)
    # tie at the first place: both sources kept with equal weight -> (0 + 0) / 2 and (1 + 1) / 2
    torch.testing.assert_close(result[:, 0], torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="topk=9 exceeds the 4 context patches"):
        propagate_labels(target, context, labels, topk=9, temperature=0.1)


def test_topk_one_copies_the_most_similar_label() -> None:
    generator = torch.Generator().manual_seed(3)
    target = F.normalize(torch.randn(12, 6, generator=generator), dim=-1)
    context = F.normalize(torch.randn(2, 12, 6, generator=generator), dim=-1)
    labels = F.one_hot(torch.randint(0, 3, (2, 12), generator=generator), 3).permute(0, 2, 1).float()
    best = (target @ context.reshape(24, 6).T).argmax(dim=1)
    expected = labels.permute(0, 2, 1).reshape(24, 3)[best].T
    assert torch.equal(propagate_labels(target, context, labels, topk=1, temperature=0.1), expected)


def test_upsampling_min_max_normalisation_and_argmax() -> None:
    labels = torch.zeros(3, 2, 2)
    labels[0] = torch.tensor([[1.0, 0.7], [0.9, 1.0]])
    labels[1] = torch.tensor([[0.0, 0.3], [0.1, 0.0]])  # weak everywhere, but normalised to 1 at its peak
    index_map = soft_labels_to_index_map(labels, patch_size=4)
    assert index_map.shape == (8, 8)
    expected_small = F.interpolate(labels[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    assert index_map[2, 6] == 1 and expected_small[0, 2, 6] > expected_small[1, 2, 6]  # won by normalisation
    assert set(index_map.unique().tolist()) == {0, 1}
    constant = torch.stack([torch.full((2, 2), 0.6), torch.full((2, 2), 0.4)])
    assert torch.equal(soft_labels_to_index_map(constant, patch_size=2), torch.zeros(4, 4, dtype=torch.long))


def square_video(positions: list[tuple[int, int]], size: int = 16, shape: tuple[int, int] = (64, 128)) -> Video:
    """White square (object 1) on black at the given (top, left) per frame."""
    frames, labels = [], []
    for top, left in positions:
        label = np.zeros(shape, dtype=np.uint8)
        label[top : top + size, left : left + size] = 1
        frames.append(np.repeat(label[..., None] * 255, 3, axis=2).astype(np.uint8))
        labels.append(label)
    return frames, labels


def bands_video(n_frames: int, shape: tuple[int, int] = (64, 128)) -> Video:
    """Two static full-width bands on patch-grid rows (objects 1 bright, 2 dark) over a mid-grey background.

    Full-width bands have no corners, which the bilinear upsampling would round off.
    """
    label = np.zeros(shape, dtype=np.uint8)
    label[16:32] = 1
    label[40:56] = 2
    frame = np.select([label[..., None] == 1, label[..., None] == 2], [255, 0], 128).repeat(3, axis=2).astype(np.uint8)
    return [frame] * n_frames, [label] * n_frames


def run_and_score(model, root: Path, out: Path, config: PropagationConfig) -> dict[str, float]:
    run_label_propagation(model, root, out, config=config, device=CPU)
    return evaluate_results(root, out).global_results()


def test_static_video_reproduces_the_annotation(make_davis_root: Callable[[dict[str, Video]], Path], tmp_path: Path):
    root = make_davis_root({"static": bands_video(5)})
    config = PropagationConfig(short_side=64, size_mask_neighborhood=2)
    scores = run_and_score(PositionTextureBackbone(patch_size=8), root, tmp_path / "out", config)
    assert scores["J&F-Mean"] == 1.0
    written = sorted((tmp_path / "out" / "static").glob("*.png"))
    assert [path.name for path in written] == [f"{t:05d}.png" for t in range(5)]
    annotation = read_label_map(root / "Annotations" / "480p" / "static" / "00000.png")
    for path in written:
        with Image.open(path) as image:
            assert image.mode == "P" and image.size == (128, 64)
        np.testing.assert_array_equal(read_label_map(path), annotation)


def test_window_radius_loses_a_jumping_object(make_davis_root: Callable[[dict[str, Video]], Path], tmp_path: Path):
    # 64x128 frames (short side 64: not resized), 8x16 patches of 8 px; the square jumps 4 patches right.
    root = make_davis_root({"jump": square_video([(16, 0), (16, 32), (16, 32)])})
    lost = run_and_score(
        ColourClassBackbone(), root, tmp_path / "r1", PropagationConfig(short_side=64, size_mask_neighborhood=1)
    )
    found = run_and_score(
        ColourClassBackbone(), root, tmp_path / "r0", PropagationConfig(short_side=64, size_mask_neighborhood=0)
    )
    assert lost["J-Mean"] == 0.0
    assert found["J-Mean"] > 0.9


def test_context_is_first_frame_plus_recent_predictions(
    make_davis_root: Callable[[dict[str, Video]], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_davis_root({"walk": square_video([(16, 4 * t) for t in range(12)], shape=(64, 128))})
    backbone = PositionTextureBackbone()
    seen: list[torch.Tensor] = []

    def recording_propagate_labels(target_features, context_features, context_labels, **kwargs):
        seen.append(context_features.clone())
        return propagate_labels(target_features, context_features, context_labels, **kwargs)

    monkeypatch.setattr(propagation, "propagate_labels", recording_propagate_labels)
    config = PropagationConfig(short_side=64, n_last_frames=3, batch_size=5)
    run_label_propagation(backbone, root, tmp_path / "out", config=config, device=CPU)
    frames = sorted((root / "JPEGImages" / "480p" / "walk").glob("*.jpg"))
    features = [
        extract_patch_features(backbone, read_frame(f, patch_size=8, short_side=64)[0][None])[0] for f in frames
    ]
    assert [len(context) for context in seen] == [1 + min(t - 1, 3) for t in range(1, 12)]
    for t, context in enumerate(seen, start=1):
        expected = [features[0]] + [features[s] for s in range(max(1, t - 3), t)]
        torch.testing.assert_close(context, torch.stack(expected))


def test_position_texture_features_track_translating_objects(
    make_davis_root: Callable[[dict[str, Video]], Path], tmp_path: Path
) -> None:
    objects = [(16, 12, 24, 32, 0, 4), (56, 110, 24, 24, -1, -3)]  # (top, left, h, w, dy, dx)
    video = translating_objects_video(n_frames=8, height=96, width=160, objects=objects)
    root = make_davis_root({"walk": video})
    config = PropagationConfig(short_side=96)
    scores = run_and_score(PositionTextureBackbone(patch_size=4), root, tmp_path / "out", config)
    assert scores["J&F-Mean"] > 0.8  # measured 0.88
    per_object = evaluate_results(root, tmp_path / "out").objects
    assert all(obj.j_frames.min() > 0.6 for obj in per_object)
    # Copying the first annotation to every frame does much worse: the objects did move.
    static = tmp_path / "static"
    for t in range(8):
        write_label_map(static / "walk" / f"{t:05d}.png", video[1][0])
    assert evaluate_results(root, static).global_results()["J&F-Mean"] < 0.6


def test_real_vit_patch_features_drop_registers_and_batch_consistently() -> None:
    torch.manual_seed(0)
    model = vit_tiny(patch_size=16, num_register_tokens=2, depth=2, img_size=64).eval()
    frames = torch.randn(3, 3, 64, 96)
    features = extract_patch_features(model, frames)
    assert features.shape == (3, 4 * 6, 192)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(3, 24))
    torch.testing.assert_close(features[1:2], extract_patch_features(model, frames[1:2]), atol=1e-5, rtol=1e-5)


def test_config_errors_name_the_flag() -> None:
    with pytest.raises(ValueError, match="topk=0 must be >= 1; fix --topk"):
        PropagationConfig(topk=0)
    with pytest.raises(ValueError, match="short_side=32"):
        PropagationConfig(short_side=32)
