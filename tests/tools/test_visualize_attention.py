"""Attention maps (the paper's Figure 5): registers excluded, maps aligned with the image, PNGs on real photos."""

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2.eval.attention_maps import (
    attention_overlays,
    cls_attention_maps,
    image_to_tensor,
    prepare_image,
    upsample_maps,
)
from dinov2.models.vision_transformer import DinoVisionTransformer
from tools.visualize_attention import SKIMAGE_PHOTOS, default_title, get_args_parser, main


def tiny_vit(num_register_tokens: int) -> DinoVisionTransformer:
    torch.manual_seed(0)
    model = DinoVisionTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=64,
        depth=2,
        num_heads=4,
        init_values=1.0,
        num_register_tokens=num_register_tokens,
    )
    if num_register_tokens:
        with torch.no_grad():  # make the registers attract a visible share of the CLS attention
            model.register_tokens.normal_(std=3.0)
    return model.eval()


@pytest.mark.parametrize("num_register_tokens", [0, 4])
def test_maps_are_the_cls_to_patch_attention_without_registers(num_register_tokens: int) -> None:
    model = tiny_vit(num_register_tokens)
    images = torch.randn(2, 3, 32, 48)
    maps = cls_attention_maps(model, images)
    assert maps.shape == (2, 8, 12)

    # Oracle from the last block's q and k: softmax(q k^T / sqrt(d)) of the CLS query, averaged over heads.
    q, k, _ = model.get_last_block_qkv(images)
    attention = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)[:, :, 0]  # [B, H, N]
    first_patch = 1 + num_register_tokens
    expected = attention[:, :, first_patch:].mean(dim=1).reshape(2, 8, 12)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)

    # Each map sums to the CLS attention mass on the patches: 1 minus the mass on CLS and registers.
    mass_on_others = attention[:, :, :first_patch].sum(dim=-1).mean(dim=1)
    torch.testing.assert_close(maps.flatten(1).sum(dim=1), 1 - mass_on_others, rtol=1e-5, atol=1e-6)
    if num_register_tokens:
        register_mass = attention[:, :, 1:first_patch].sum(dim=-1).mean(dim=1)
        assert (register_mass > 0.02).all(), register_mass  # the registers take mass that the maps leave out
        assert (maps.flatten(1).sum(dim=1) < 1 - register_mass + 1e-6).all()


def test_rejects_image_not_a_multiple_of_the_patch() -> None:
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        cls_attention_maps(tiny_vit(0), torch.randn(1, 3, 30, 32))


def test_prepare_image_crops_to_patches_and_returns_the_shown_pixels() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 75, 3), dtype=np.uint8))
    tensor, shown = prepare_image(image, 35, patch_size=4)
    # shorter side 50 -> 35, longer 75 -> 52 (rounded), cropped to 32 x 52
    assert tensor.shape == (3, 32, 52)
    assert shown.size == (52, 32)
    assert torch.equal(image_to_tensor(image, 35, 4), tensor)
    # the tensor is the normalised shown image
    pixels = torch.from_numpy(np.array(shown)).permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(tensor, (pixels - mean) / std, rtol=1e-5, atol=1e-5)


def test_upsample_maps_is_nearest_and_rescaled() -> None:
    maps = torch.tensor([[[0.1, 0.3], [0.2, 0.5]]])
    heat = upsample_maps(maps, 4, 6)
    assert heat.shape == (1, 4, 6)
    assert heat.min() == 0 and heat.max() == 1
    torch.testing.assert_close(heat[0, :2, :3], torch.zeros(2, 3))  # top-left patch, the smallest value
    torch.testing.assert_close(heat[0, 2:, 3:], torch.ones(2, 3))  # bottom-right patch, the largest value
    torch.testing.assert_close(heat[0, 0, 3], torch.tensor(0.5))  # (0.3 - 0.1) / (0.5 - 0.1)


def test_overlay_heat_map_matches_the_model_map() -> None:
    model = tiny_vit(2)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    [(shown, heat)] = attention_overlays(model, [image], size=32, device=torch.device("cpu"))
    assert shown.size == (32, 32) and heat.shape == (32, 32)
    maps = cls_attention_maps(model, image_to_tensor(image, 32, 4)[None])
    torch.testing.assert_close(heat, upsample_maps(maps, 32, 32)[0])


def test_tool_writes_pngs_for_scikit_image_photos(tmp_path) -> None:
    args = get_args_parser().parse_args(
        [
            "--arch",
            "vit_tiny",
            "--patch-size",
            "8",
            "--num-register-tokens",
            "2",
            "--opts",
            "student.depth=1",
            "--image-size",
            "48",
            "--output-dir",
            str(tmp_path),
        ]
    )
    with torch.inference_mode():
        written = main(args)
    names = sorted(path.name for path in written)
    assert names == sorted([f"{name}_attention.png" for name in SKIMAGE_PHOTOS] + ["attention_grid.png"])
    for path in written:
        with Image.open(path) as png:
            assert png.format == "PNG"
            pixels = np.asarray(png.convert("RGB"))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 10  # a real picture, not a blank canvas


def test_default_title_names_the_run(tmp_path, monkeypatch) -> None:
    teacher = tmp_path / "my_run" / "eval" / "training_199" / "teacher_checkpoint.pth"
    teacher.parent.mkdir(parents=True)
    assert default_title(str(teacher)) == "my_run (training_199 teacher)"
    monkeypatch.chdir(tmp_path / "my_run")
    assert default_title("eval/training_199/teacher_checkpoint.pth") == "my_run (training_199 teacher)"
    assert default_title(str(tmp_path / "weights" / "vits14.pth")) == "weights/vits14.pth"
    assert default_title(None, str(tmp_path / "my_run" / "config.yaml")) == "random init (my_run)"
    assert default_title(None) == "random init"
