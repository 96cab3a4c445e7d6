"""MaskCut with a tiny ViT on real photos (scikit-image), and the tools/eval_maskcut.py command line."""

import importlib.util
import json
import pathlib
from types import ModuleType

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from dinov2.eval.setup import build_backbone_for_eval
from eval.maskcut import MaskCut, extract_patch_features, load_coco, mask_to_rle

REPO = pathlib.Path(__file__).resolve().parents[3]

TINY_CONFIG = """\
student:
  arch: vit_tiny
  depth: 2
  patch_size: 16
  num_register_tokens: 2
crops:
  global_crops_size: 64
"""


def load_tool() -> ModuleType:
    """Import tools/eval_maskcut.py (the CLIs are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("tools_eval_maskcut", REPO / "tools" / "eval_maskcut.py")
    assert spec is not None and spec.loader is not None, "tools/eval_maskcut.py must exist"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PHOTOS = {
    "astronaut.png": skimage.data.astronaut,
    "chelsea.png": skimage.data.chelsea,
    "coffee.png": skimage.data.coffee,
}


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, pathlib.Path, pathlib.Path]:
    """A 2-block ViT-Ti/16 with 2 registers, its config file and its saved (random, seeded) weights."""
    folder = tmp_path_factory.mktemp("backbone")
    config_file = folder / "config.yaml"
    config_file.write_text(TINY_CONFIG)
    torch.manual_seed(0)
    model = build_backbone_for_eval(config_file=config_file)
    weights = folder / "weights.pth"
    torch.save(model.state_dict(), weights)
    return model, config_file, weights


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(load()) for load in PHOTOS.values()]


def test_key_features_are_the_last_qkv_projection_without_cls_and_registers(
    tiny_backbone: tuple[torch.nn.Module, pathlib.Path, pathlib.Path],
) -> None:
    model = tiny_backbone[0]
    images = torch.randn(2, 3, 64, 64)
    captured = {}
    last_block = list(model.iter_blocks())[-1]
    handle = last_block.attn.qkv.register_forward_hook(lambda module, inputs, output: captured.update(qkv=output))
    with torch.inference_mode():
        model.forward_features(images)
    handle.remove()
    dim = model.embed_dim
    expected_keys = captured["qkv"][:, 1 + model.num_register_tokens :, dim : 2 * dim]  # qkv layout (3, heads, hd)
    keys = extract_patch_features(model, images, feature="k")
    assert keys.shape == (2, 16, dim)
    torch.testing.assert_close(keys, expected_keys)
    patch = extract_patch_features(model, images, feature="patch")
    with torch.inference_mode():
        torch.testing.assert_close(patch, model.forward_features(images)["x_norm_patchtokens"])
    assert extract_patch_features(model, images, feature="kqv").shape == (2, 16, 3 * dim)


def test_maskcut_on_real_photos_gives_disjoint_masks_at_the_original_size(
    tiny_backbone: tuple[torch.nn.Module, pathlib.Path, pathlib.Path], photos: list[Image.Image]
) -> None:
    maskcut = MaskCut(tiny_backbone[0], tau=0.15, n_masks=3, fixed_size=128)
    outputs = maskcut(photos)
    assert len(outputs) == len(photos)
    for image, masks in zip(photos, outputs, strict=True):
        assert masks.shape == (3, image.size[1], image.size[0]) and masks.dtype == bool
        assert masks[0].any(), "iteration 0 always keeps the component holding the seed"
        assert masks.sum(axis=0).max() <= 1, "without the CRF the masks are pairwise disjoint"
        rle = mask_to_rle(masks[0])
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), masks[0])
    with pytest.raises(ValueError, match="--fixed-size"):
        MaskCut(tiny_backbone[0], fixed_size=100)


def test_eval_maskcut_tool_writes_valid_coco_results(
    tiny_backbone: tuple[torch.nn.Module, pathlib.Path, pathlib.Path],
    photos: list[Image.Image],
    tmp_path: pathlib.Path,
) -> None:
    _, config_file, weights = tiny_backbone
    eval_maskcut = load_tool()
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    records, annotations = [], []
    for image_id, (name, image) in enumerate(zip(PHOTOS, photos, strict=True), start=10):
        image.save(images_dir / name)
        width, height = image.size
        records.append({"id": image_id, "file_name": name, "width": width, "height": height})
        central = np.zeros((height, width), dtype=bool)
        central[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = True
        rle = mask_to_rle(central)
        annotations.append(
            {"id": image_id, "image_id": image_id, "category_id": 5, "segmentation": rle, "iscrowd": 0,
             "area": float(central.sum()), "bbox": mask_utils.toBbox(rle).tolist()}
        )  # fmt: skip
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(
        json.dumps({"images": records, "annotations": annotations, "categories": [{"id": 5, "name": "thing"}]})
    )
    output_dir = tmp_path / "out"
    argv = [
        "--config-file", str(config_file), "--pretrained-weights", str(weights), "--images", str(images_dir),
        "--annotations", str(annotation_file), "--output-dir", str(output_dir), "--crf", "--vis", "2",
        "--fixed-size", "128", "--batch-size", "2",
    ]  # fmt: skip
    metrics = eval_maskcut.main(eval_maskcut.get_args_parser().parse_args(argv))

    results = json.loads((output_dir / "results.json").read_text())
    assert results, "every photo gets at least its iteration-0 mask"
    image_ids = [result["image_id"] for result in results]
    assert image_ids == sorted(image_ids) and set(image_ids) <= {10, 11, 12}
    gt = load_coco(json.loads(annotation_file.read_text()))
    loaded = gt.loadRes(results)
    assert len(loaded.getAnnIds()) == len(results)
    for result in results:
        record = records[result["image_id"] - 10]
        assert result["segmentation"]["size"] == [record["height"], record["width"]]
        assert result["score"] == 1.0 and result["category_id"] == 1
    written = json.loads((output_dir / "metrics.json").read_text())
    assert written["n_images"] == 3 and written["n_results"] == len(results) and written["settings"]["crf"]
    for iou_type in ("bbox", "segm"):
        assert set(written[iou_type]) == {"AP", "AP50", "AP75"}
        assert all(0.0 <= value <= 1.0 for value in written[iou_type].values())
        assert written[iou_type] == metrics[iou_type]
    overlays = sorted(path.name for path in (output_dir / "vis").iterdir())
    assert overlays == ["10.png", "11.png"]
    with Image.open(output_dir / "vis" / "10.png") as overlay:
        assert overlay.size == photos[0].size

    no_gt_dir = tmp_path / "out_no_gt"
    argv_no_gt = argv[: argv.index("--annotations")] + [
        "--output-dir",
        str(no_gt_dir),
        "--fixed-size",
        "128",
        "--max-images",
        "2",
    ]
    assert eval_maskcut.main(eval_maskcut.get_args_parser().parse_args(argv_no_gt)) == {}
    listed = json.loads((no_gt_dir / "images.json").read_text())
    assert [(record["id"], record["file_name"]) for record in listed] == list(enumerate(sorted(PHOTOS)[:2], start=1))
    assert {result["image_id"] for result in json.loads((no_gt_dir / "results.json").read_text())} == {1, 2}
    assert not (no_gt_dir / "metrics.json").exists()
