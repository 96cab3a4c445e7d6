"""DinoVisionTransformer: keys and shapes (official layout), numerical agreement with a hand-written reference forward,
masking, position-embedding interpolation, list-of-crops input and the forward variants."""

import math

import pytest
import torch
import torch.nn.functional as F
from vit_reference import reference_forward, reference_tokens

from dinov2.models.vision_transformer import DinoVisionTransformer, vit_base, vit_giant2, vit_large, vit_small, vit_tiny

ATOL = 1e-5


def tiny_vit(**kwargs) -> DinoVisionTransformer:
    settings = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4)
    settings.update(kwargs)
    torch.manual_seed(0)
    model = DinoVisionTransformer(**settings)
    # Non-trivial values for parameters that start at constants (LayerNorm, LayerScale, mask token, biases).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "gamma", "mask_token")) or ".norm" in name or name.startswith("norm."):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def expected_keys(depth: int, dim: int, patch: int, n_patches: int, regs: int, layerscale: bool, ffn: str,
                  hidden: int, chunks: int = 0) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """Key -> shape table of the official DINOv2 state dicts."""
    keys = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + n_patches, dim), "mask_token": (1, dim)}
    if regs:
        keys["register_tokens"] = (1, regs, dim)
    keys["patch_embed.proj.weight"] = (dim, 3, patch, patch)
    keys["patch_embed.proj.bias"] = (dim,)
    chunk_size = depth // chunks if chunks else 0
    for i in range(depth):
        p = f"blocks.{i // chunk_size}.{i}." if chunks else f"blocks.{i}."
        block = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
                 "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
                 "norm2.weight": (dim,), "norm2.bias": (dim,)}  # fmt: skip
        if ffn == "mlp":
            block.update({"mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,),
                          "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,)})  # fmt: skip
        else:
            block.update({"mlp.w12.weight": (2 * hidden, dim), "mlp.w12.bias": (2 * hidden,),
                          "mlp.w3.weight": (dim, hidden), "mlp.w3.bias": (dim,)})  # fmt: skip
        if layerscale:
            block.update({"ls1.gamma": (dim,), "ls2.gamma": (dim,)})
        keys.update({p + k: v for k, v in block.items()})
    keys["norm.weight"] = (dim,)
    keys["norm.bias"] = (dim,)
    return keys


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "factory, dim, depth, heads",
    [(vit_tiny, 192, 12, 3), (vit_small, 384, 12, 6), (vit_base, 768, 12, 12), (vit_large, 1024, 24, 16)],
)
@pytest.mark.parametrize("regs, chunks", [(0, 0), (4, 4)])
def test_factory_keys_and_shapes(factory, dim, depth, heads, regs, chunks):
    with torch.device("meta"):
        model = factory(patch_size=14, img_size=518, num_register_tokens=regs, init_values=1e-5, block_chunks=chunks)
    assert (model.embed_dim, model.n_blocks, model.num_heads, model.patch_size) == (dim, depth, heads, 14)
    assert shapes(model) == expected_keys(depth, dim, 14, 37 * 37, regs, True, "mlp", 4 * dim, chunks)


def test_vit_large_reg4_and_giant_match_released_counts():
    with torch.device("meta"):
        large = vit_large(patch_size=14, img_size=518, num_register_tokens=4, init_values=1.0)
        giant = vit_giant2(patch_size=14, img_size=518, init_values=1.0, ffn_layer="swiglufused")
    assert len(large.state_dict()) == 344
    assert sum(p.numel() for p in large.parameters()) == 304_372_736
    assert len(giant.state_dict()) == 567
    assert sum(p.numel() for p in giant.parameters()) == 1_136_480_768
    assert shapes(giant) == expected_keys(40, 1536, 14, 37 * 37, 0, True, "swiglu", 4096)
    assert giant.num_heads == 24 and giant.embed_dim // giant.num_heads == 64


def test_no_layerscale_removes_gamma_keys_and_identity_ffn():
    model = tiny_vit(init_values=None, ffn_layer="identity")
    keys = list(model.state_dict())
    assert not any("gamma" in k or ".mlp." in k for k in keys)
    assert any(k.endswith("attn.qkv.weight") for k in keys)


def test_constructor_defaults_are_official():
    with torch.device("meta"):
        model = DinoVisionTransformer()
    assert (model.embed_dim, model.n_blocks, model.num_heads, model.patch_size) == (768, 12, 12, 16)
    assert model.pos_embed.shape == (1, 197, 768)
    assert not model.chunked_blocks and model.interpolate_offset == 0.1 and not model.interpolate_antialias
    assert "blocks.0.ls1.gamma" not in model.state_dict()
    assert model.blocks[0].attn.qkv.bias is not None
    assert isinstance(model.blocks[0].mlp.act, torch.nn.GELU) and model.blocks[0].mlp.act.approximate == "none"
    assert model.norm.eps == 1e-6 and model.blocks[0].norm1.eps == 1e-6


def test_init_follows_dinov2():
    torch.manual_seed(0)
    model = vit_small(patch_size=16, init_values=1e-5, num_register_tokens=4)
    assert torch.all(model.mask_token == 0)
    assert model.cls_token.std() < 1e-5 and model.register_tokens.abs().max() < 1e-5
    assert abs(model.pos_embed.std().item() - 0.02) < 2e-3
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 1e-3
    assert torch.all(model.blocks[0].attn.qkv.bias == 0) and torch.all(model.blocks[0].mlp.fc2.bias == 0)
    assert torch.all(model.blocks[3].ls2.gamma == 1e-5)


@pytest.mark.parametrize(
    "kwargs, size",
    [
        (dict(num_register_tokens=2, init_values=0.5), (40, 56)),
        (dict(block_chunks=2, ffn_layer="swiglufused", qkv_bias=False, proj_bias=False), (32, 32)),
        (dict(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True, init_values=1.0), (24, 24)),
    ],
)
def test_forward_features_match_reference(kwargs, size):
    model = tiny_vit(**kwargs)
    images = torch.randn(2, 3, *size)
    grid = (size[0] // 8) * (size[1] // 8)
    masks = torch.rand(2, grid) < 0.4
    with torch.no_grad():
        for m in (None, masks):
            out = model.forward_features(images, masks=m)
            ref = reference_forward(
                model.state_dict(), images, patch_size=8, num_heads=4, masks=m,
                interpolate_offset=model.interpolate_offset, interpolate_antialias=model.interpolate_antialias,
            )  # fmt: skip
            for key, value in ref.items():
                torch.testing.assert_close(out[key], value, atol=ATOL, rtol=ATOL, msg=key)
            assert out["masks"] is m
    regs = model.num_register_tokens
    assert out["x_norm_regtokens"].shape == (2, regs, 64)
    assert out["x_norm_patchtokens"].shape == (2, grid, 64)


def test_mask_token_replaces_masked_patches():
    model = tiny_vit(num_register_tokens=2)
    images = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5, 6]] = True
    masks[1, 15] = True
    with torch.no_grad():
        plain = model.prepare_tokens_with_masks(images)
        masked = model.prepare_tokens_with_masks(images, masks)
        patch_pos = model.pos_embed[0, 1:]
        expected = model.mask_token[0] + patch_pos  # masked patch = mask token + its position embedding
        masked_patches, plain_patches = masked[:, 3:], plain[:, 3:]
        torch.testing.assert_close(masked_patches[masks], expected[masks.nonzero()[:, 1]])
        torch.testing.assert_close(masked_patches[~masks], plain_patches[~masks])
        torch.testing.assert_close(masked[:, :3], plain[:, :3])
        no_masks = torch.zeros_like(masks)
        torch.testing.assert_close(model.forward_features(images, no_masks)["x_prenorm"],
                                   model.forward_features(images)["x_prenorm"])  # fmt: skip


def test_registers_follow_cls_and_carry_no_position_embedding():
    model = tiny_vit(num_register_tokens=3)
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 3 + 16, 64)
    torch.testing.assert_close(tokens[:, 1:4], model.register_tokens.expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 0], (model.cls_token[0, 0] + model.pos_embed[0, 0]).expand(2, -1))


def test_pos_embed_unchanged_at_native_size():
    model = tiny_vit()
    tokens = torch.zeros(1, 17, 64)
    assert model.interpolate_pos_encoding(tokens, 32, 32) is model.pos_embed
    # Same token count but H != W: interpolated (to a 2x8 grid) instead of reused.
    out = model.interpolate_pos_encoding(tokens, 16, 64)
    assert out.shape == (1, 17, 64) and not torch.equal(out, model.pos_embed)


def test_pos_embed_offset_and_size_modes():
    model = tiny_vit()
    tokens = torch.zeros(1, 1 + 6 * 3, 64)
    side = 4
    grid = model.pos_embed[:, 1:].reshape(1, side, side, 64).permute(0, 3, 1, 2)
    with torch.no_grad():
        offset_out = model.interpolate_pos_encoding(tokens, 48, 24)
        # The official rule: scale factors ((H/p + 0.1) / M, (W/p + 0.1) / M), H first.
        expected = F.interpolate(grid, scale_factor=(6.1 / 4, 3.1 / 4), mode="bicubic")
        torch.testing.assert_close(offset_out[0, 1:], expected[0].permute(1, 2, 0).reshape(18, 64))
        torch.testing.assert_close(offset_out[0, 0], model.pos_embed[0, 0])
        model.interpolate_offset = 0.0
        size_out = model.interpolate_pos_encoding(tokens, 48, 24)
        expected = F.interpolate(grid, size=(6, 3), mode="bicubic")
        torch.testing.assert_close(size_out[0, 1:], expected[0].permute(1, 2, 0).reshape(18, 64))
        assert not torch.allclose(offset_out, size_out)
        # Antialias changes a downsampling interpolation (registers-model setting).
        small = torch.zeros(1, 1 + 2 * 2, 64)
        plain = model.interpolate_pos_encoding(small, 16, 16)
        model.interpolate_antialias = True
        antialiased = model.interpolate_pos_encoding(small, 16, 16)
        assert plain.shape == antialiased.shape == (1, 5, 64) and not torch.allclose(plain, antialiased)


def test_pos_embed_interpolated_in_float32_and_cast_back():
    model = tiny_vit()
    tokens = torch.zeros(1, 1 + 36, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        out = model.interpolate_pos_encoding(tokens, 48, 48)
        reference = model.interpolate_pos_encoding(tokens.float(), 48, 48)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference.to(torch.bfloat16), atol=0, rtol=0)


def test_image_size_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_vit()(torch.randn(1, 3, 30, 32))


def test_list_of_crops_equals_separate_calls():
    model = tiny_vit(num_register_tokens=1, init_values=0.3)
    global_crops, local_crops = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 16, 24)
    masks = torch.rand(2, 16) < 0.5
    with torch.no_grad():
        outs = model.forward_features([global_crops, local_crops], [masks, None])
        separate = [model.forward_features(global_crops, masks), model.forward_features(local_crops)]
        no_mask_list = model.forward_features([global_crops, local_crops])
    assert len(outs) == 2
    for out, ref in zip(outs, separate, strict=True):
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(out[key], ref[key], atol=ATOL, rtol=ATOL)
    assert outs[0]["masks"] is masks and outs[1]["masks"] is None
    torch.testing.assert_close(no_mask_list[1]["x_prenorm"], separate[1]["x_prenorm"], atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match="one mask"):
        model.forward_features([global_crops, local_crops], [masks])


def test_forward_is_training_switch():
    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cls = model(images)
        out = model(images, is_training=True)
        outs = model([images, images[:1]], is_training=True)
    torch.testing.assert_close(cls, out["x_norm_clstoken"])
    assert cls.shape == (2, 64) and isinstance(outs, list) and len(outs) == 2


@pytest.mark.parametrize("chunks", [0, 2])
def test_get_intermediate_layers(chunks):
    model = tiny_vit(depth=4, block_chunks=chunks, num_register_tokens=2)
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(images)
        per_block = []
        for block in model.iter_blocks():
            tokens = block(tokens)
            per_block.append(tokens)
        last_two = model.get_intermediate_layers(images, n=2)
        chosen = model.get_intermediate_layers(images, n=[0, 2], norm=False, return_class_token=True)
        reshaped = model.get_intermediate_layers(images, n=1, reshape=True)
        full = model.forward_features(images)
    assert len(per_block) == 4
    assert len(last_two) == 2 and last_two[0].shape == (2, 24, 64)
    torch.testing.assert_close(last_two[0], model.norm(per_block[2])[:, 3:])
    torch.testing.assert_close(last_two[1], full["x_norm_patchtokens"])
    (patch0, cls0), (patch2, cls2) = chosen
    torch.testing.assert_close(patch0, per_block[0][:, 3:])
    torch.testing.assert_close(cls2, per_block[2][:, 0])
    assert reshaped[0].shape == (2, 64, 4, 6)
    torch.testing.assert_close(reshaped[0].flatten(2).transpose(1, 2), full["x_norm_patchtokens"])
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(images, n=[4])


def test_chunked_and_flat_models_compute_the_same():
    flat = tiny_vit(depth=5, init_values=0.2)
    chunked = tiny_vit(depth=5, init_values=0.2, block_chunks=2)
    assert len(chunked.blocks) == 3  # chunk size 2 -> ceil(5 / 2) chunks, as upstream
    flat_keys = [k for k in flat.state_dict() if k.startswith("blocks.")]
    chunked_keys = [k for k in chunked.state_dict() if k.startswith("blocks.")]
    assert chunked_keys[0].startswith("blocks.0.0.") and chunked_keys[-1].startswith("blocks.2.4.")
    assert [k.split(".", 2)[2] for k in chunked_keys] == [k.split(".", 1)[1] for k in flat_keys]
    chunked.load_state_dict(
        {k2: flat.state_dict()[k1] for k1, k2 in zip(flat.state_dict(), chunked.state_dict(), strict=True)}
    )
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(chunked(images), flat(images))


def test_last_selfattention_and_qkv():
    model = tiny_vit(num_register_tokens=2)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        attention = model.get_last_selfattention(images)
        q, k, v = model.get_last_block_qkv(images)
        tokens = model.prepare_tokens_with_masks(images)
        blocks = list(model.iter_blocks())
        for block in blocks[:-1]:
            tokens = block(tokens)
        last = blocks[-1]
        y = last.norm1(tokens)
        qkv = F.linear(y, last.attn.qkv.weight, last.attn.qkv.bias).reshape(2, 19, 3, 4, 16)
        ref_q, ref_k, ref_v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        ref_attention = torch.softmax(ref_q @ ref_k.transpose(-1, -2) / math.sqrt(16), dim=-1)
        out = tokens + last.attn_residual(tokens)
        manual = tokens + last.attn.proj((attention @ v).transpose(1, 2).reshape(2, 19, 64))
    assert attention.shape == (2, 4, 19, 19)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 19))
    torch.testing.assert_close(attention, ref_attention)
    for got, ref in zip((q, k, v), (ref_q, ref_k, ref_v), strict=True):
        assert got.shape == (2, 4, 19, 16)
        torch.testing.assert_close(got, ref)
    torch.testing.assert_close(out, manual, atol=ATOL, rtol=ATOL)


def test_drop_path_rates_per_block():
    linear = DinoVisionTransformer(embed_dim=64, depth=4, num_heads=4, img_size=32, drop_path_rate=0.3)
    uniform = DinoVisionTransformer(
        embed_dim=64, depth=4, num_heads=4, img_size=32, drop_path_rate=0.3, drop_path_uniform=True
    )
    assert [b.sample_drop_ratio for b in linear.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert [b.sample_drop_ratio for b in uniform.blocks] == pytest.approx([0.3] * 4)
    # Rates come from a float32 linspace as upstream: 0.1 becomes 0.10000000149 > 0.1, so that block
    # uses the batch-subset variant exactly like the official model does.
    assert linear.blocks[1].sample_drop_ratio == torch.tensor(0.1, dtype=torch.float32).item()
    assert linear.blocks[1].sample_drop_ratio > 0.1


def test_training_step_with_drop_path_and_list_backpropagates():
    model = tiny_vit(drop_path_rate=0.4, drop_path_uniform=True, init_values=1e-5, num_register_tokens=1).train()
    outs = model([torch.randn(4, 3, 32, 32), torch.randn(6, 3, 16, 16)], [torch.rand(4, 16) < 0.3, None],
                 is_training=True)  # fmt: skip
    loss = sum(o["x_norm_clstoken"].sum() + o["x_norm_patchtokens"].square().mean() for o in outs)
    loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in model.named_parameters()), "every parameter gets a gradient"
    assert torch.isfinite(model.pos_embed.grad).all()


def test_reference_tokens_agree_with_model_for_non_square_offset_grid():
    model = tiny_vit()
    images = torch.randn(1, 3, 56, 24)
    with torch.no_grad():
        ours = model.prepare_tokens_with_masks(images)
        ref = reference_tokens(model.state_dict(), images, patch_size=8, interpolate_offset=0.1,
                               interpolate_antialias=False)  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=ATOL)


def test_residual_stream_stays_float32_under_autocast():
    model = tiny_vit(num_register_tokens=1, init_values=0.1)
    images = torch.randn(2, 3, 32, 32)
    masks = torch.rand(2, 16) < 0.5
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.patch_embed(images).dtype == torch.bfloat16
        out = model.forward_features(images, masks)
    # As upstream: concatenating the float32 cls token promotes the tokens, and residual adds keep float32.
    assert out["x_prenorm"].dtype == torch.float32
    with torch.no_grad():
        reference = model.forward_features(images, masks)
    torch.testing.assert_close(out["x_norm_clstoken"].float(), reference["x_norm_clstoken"], atol=0.1, rtol=0.05)


def test_gradient_checkpointing_gives_identical_gradients_and_recomputes():
    def grads_and_attn_calls(checkpointing: bool) -> tuple[dict, int]:
        torch.manual_seed(0)
        model = vit_tiny(patch_size=4, img_size=16, depth=2, drop_path_rate=0.3, drop_path_uniform=True,
                         init_values=0.1, gradient_checkpointing=checkpointing).train()  # fmt: skip
        calls = []
        for block in model.iter_blocks():
            block.attn.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        crops = [torch.randn(4, 3, 16, 16), torch.randn(6, 3, 8, 8)]
        outputs = model(crops, is_training=True)
        loss = sum(out["x_norm_clstoken"].square().sum() + out["x_norm_patchtokens"].sum() for out in outputs)
        loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}, len(calls)

    plain, plain_calls = grads_and_attn_calls(False)
    checkpointed, checkpointed_calls = grads_and_attn_calls(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, grad in plain.items():
        assert torch.equal(grad, checkpointed[name]), name
    # Each block runs its attention once per crop batch in forward, and again in backward when checkpointed.
    assert plain_calls == 2 * 2 and checkpointed_calls == 2 * plain_calls
