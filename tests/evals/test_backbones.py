"""Each backbone plugin loads random weights saved in its official format and returns
patch grids (B, h, w, C) and global vectors of the right kind."""
from __future__ import annotations

import pytest
import torch
from global_helpers import TINY, save_hf, save_ijepa_pth_tar, save_timm, save_timm_file

from evals.backbones import BackboneSpec, CheckpointError, UserError, build_backbone


def check_shapes(backbone, size=(32, 32), n=2):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        grids, g = backbone.forward_with_global(x, n)
    h, w = size[0] // backbone.patch_size, size[1] // backbone.patch_size
    assert len(grids) == n
    assert all(t.shape == (2, h, w, backbone.embed_dim) for t in grids)
    assert g.shape[0] == 2 and torch.isfinite(g).all()
    info = backbone.protocol_info()
    for key in ("mean", "std", "image_size", "patch_size", "global_vector"):
        assert key in info
    assert not any(p.requires_grad for p in backbone.parameters())
    return grids, g


# ------------------------------------------------------------------------------- I-JEPA


def test_ijepa_pth_tar_target_and_context(tmp_path):
    path = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    models = save_ijepa_pth_tar(path)
    x = torch.randn(2, 3, 32, 32)
    for key in ("target_encoder", "encoder"):
        bb = build_backbone(BackboneSpec("ijepa", str(path), {"ckpt_key": key}))
        grids, g = check_shapes(bb)
        assert bb.protocol_info()["ckpt_key"] == key
        ref = models[key]
        with torch.no_grad():
            tokens = ref.fc_norm(ref.blocks(ref.embed(x))) if isinstance(ref.norm, torch.nn.Identity) \
                else ref.norm(ref.blocks(ref.embed(x)))
            ours = bb.forward_patches(x)
        torch.testing.assert_close(ours.reshape(2, -1, 64), tokens)
        torch.testing.assert_close(bb.global_vector(x), ours.mean((1, 2)))


def test_ijepa_other_resolution_non_square_uses_exact_sincos(tmp_path):
    path = tmp_path / "ijepa.pth.tar"
    save_ijepa_pth_tar(path)
    bb = build_backbone(BackboneSpec("ijepa", str(path)))
    assert bb.encoder.positions_are_sincos
    check_shapes(bb, size=(48, 24))


def test_ijepa_strict_loading_lists_keys(tmp_path):
    path = tmp_path / "bad.pth.tar"
    save_ijepa_pth_tar(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["target_encoder"]["module.blocks.0.ls1.gamma"] = torch.ones(64)
    del ckpt["target_encoder"]["module.blocks.1.mlp.fc2.bias"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        build_backbone(BackboneSpec("ijepa", str(path)))
    assert "blocks.0.ls1.gamma" in str(err.value) and "blocks.1.mlp.fc2.bias" in str(err.value)
    with pytest.raises(CheckpointError, match="'target_encoder'"):
        torch.save({"encoder": ckpt["encoder"]}, path)
        build_backbone(BackboneSpec("ijepa", str(path)))


def test_hf_ijepa_matches_transformers(tmp_path):
    from transformers import IJepaConfig, IJepaModel

    cfg = IJepaConfig(**TINY, image_size=32, patch_size=8, layer_norm_eps=1e-6)
    hf = save_hf(IJepaModel, cfg, tmp_path / "hf")
    bb = build_backbone(BackboneSpec("ijepa", str(tmp_path / "hf")))
    assert not bb.encoder.positions_are_sincos  # random table: resampled, not replaced
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
        torch.testing.assert_close(bb.forward_patches(x).reshape(2, 16, 32), ref, atol=1e-5, rtol=1e-5)
        # other sizes: HF interpolates bicubically to the exact grid, and so do we
        x2 = torch.randn(1, 3, 48, 40)
        ref2 = hf(pixel_values=x2, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(bb.forward_patches(x2).reshape(1, 30, 32), ref2, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- DINOv2


@pytest.mark.parametrize("registers", [False, True])
def test_hf_dinov2(tmp_path, registers):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    if registers:
        hf = save_hf(Dinov2WithRegistersModel, Dinov2WithRegistersConfig(
            **TINY, image_size=28, patch_size=7, num_register_tokens=4), tmp_path / "m")
    else:
        hf = save_hf(Dinov2Model, Dinov2Config(**TINY, image_size=28, patch_size=7), tmp_path / "m")
    bb = build_backbone(BackboneSpec("dinov2", str(tmp_path / "m"), {"image_size": 28}))
    grids, g = check_shapes(bb, size=(28, 28))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = hf(pixel_values=x).last_hidden_state
        grids, g = bb.forward_with_global(x)
    prefix = 5 if registers else 1
    torch.testing.assert_close(g, out[:, 0])
    torch.testing.assert_close(grids[-1].reshape(2, 16, 32), out[:, prefix:])
    check_shapes(bb, size=(35, 21))


def test_hf_dinov2_strict(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2Config, Dinov2Model

    save_hf(Dinov2Model, Dinov2Config(**TINY, image_size=28, patch_size=7), tmp_path / "m")
    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    sd["encoder.layer.0.layer_scale1.extra"] = torch.ones(3)
    del sd["layernorm.bias"]
    save_file(sd, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="layernorm.bias"):
        build_backbone(BackboneSpec("dinov2", str(tmp_path / "m")))


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_timm_dinov2_folder(tmp_path, name):
    model = save_timm(name, tmp_path / "t", embed_dim=48, depth=2, img_size=56)
    bb = build_backbone(BackboneSpec("dinov2", str(tmp_path / "t"), {"image_size": 56}))
    assert bb.num_prefix_tokens == (5 if "reg4" in name else 1)
    grids, g = check_shapes(bb, size=(28, 28))
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        feats = model.forward_features(x)
        grids, g = bb.forward_with_global(x)
    torch.testing.assert_close(g, feats[:, 0])
    torch.testing.assert_close(grids[-1].reshape(2, 16, 48), feats[:, bb.num_prefix_tokens:])
    check_shapes(bb, size=(42, 28))


def test_timm_dinov2_single_file_needs_arch(tmp_path):
    save_timm_file("vit_small_patch14_dinov2", tmp_path / "w.safetensors", embed_dim=48, depth=2, img_size=28)
    with pytest.raises(UserError, match="--arch"):
        build_backbone(BackboneSpec("dinov2", str(tmp_path / "w.safetensors")))
    bb = build_backbone(BackboneSpec("dinov2", str(tmp_path / "w.safetensors"),
                                     {"arch": "vit_small_patch14_dinov2.lvd142m", "image_size": 28}))
    check_shapes(bb, size=(28, 28))


# ------------------------------------------------------------------------------- SigLIP / SigLIP2


def test_hf_siglip_vision(tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hf = save_hf(SiglipVisionModel, SiglipVisionConfig(**TINY, image_size=32, patch_size=8), tmp_path / "s")
    bb = build_backbone(BackboneSpec("siglip2", str(tmp_path / "s")))
    assert bb.mean == (0.5, 0.5, 0.5) and not bb.has_class_token
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = hf(pixel_values=x)
        grids, g = bb.forward_with_global(x)
    torch.testing.assert_close(g, out.pooler_output)
    torch.testing.assert_close(grids[-1].reshape(2, 16, 32), out.last_hidden_state)
    check_shapes(bb, size=(48, 24))


def test_hf_siglip2_naflex_padding_dropped(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    save_hf(Siglip2VisionModel, Siglip2VisionConfig(**TINY, num_patches=16, patch_size=8), tmp_path / "s2")
    bb = build_backbone(BackboneSpec("siglip2", str(tmp_path / "s2")))
    padded = build_backbone(BackboneSpec("siglip2", str(tmp_path / "s2"), {"max_num_patches": 40}))
    assert bb.image_size == 32
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        grids, g = bb.forward_with_global(x, 2)
        pgrids, pg = padded.forward_with_global(x, 2)
    assert grids[-1].shape == (2, 4, 3, 32)
    torch.testing.assert_close(pgrids[-1], grids[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pg, g, atol=1e-5, rtol=1e-5)


def test_hf_full_siglip_model_drops_only_text_tower(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    cfg = SiglipConfig(vision_config=dict(**TINY, image_size=32, patch_size=8),
                       text_config=dict(**TINY, vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    save_hf(SiglipModel, cfg, tmp_path / "full")
    check_shapes(build_backbone(BackboneSpec("siglip2", str(tmp_path / "full"))))


def test_timm_siglip(tmp_path):
    model = save_timm("vit_base_patch16_siglip_224", tmp_path / "t", embed_dim=48, depth=2, img_size=32)
    bb = build_backbone(BackboneSpec("siglip2", str(tmp_path / "t")))
    assert bb.image_size == 32 and bb.num_prefix_tokens == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        grids, g = bb.forward_with_global(x)
    torch.testing.assert_close(g, model.forward_head(feats, pre_logits=True))
    torch.testing.assert_close(grids[-1].reshape(2, 4, 48), feats)
    check_shapes(bb, size=(48, 32))


def test_wrong_family_and_options_are_user_errors(tmp_path):
    save_timm("vit_base_patch16_siglip_224", tmp_path / "t", embed_dim=48, depth=2, img_size=32)
    with pytest.raises(UserError, match="not a dinov2 model"):
        build_backbone(BackboneSpec("dinov2", str(tmp_path / "t")))
    with pytest.raises(UserError, match="ckpt_key"):
        build_backbone(BackboneSpec("siglip2", str(tmp_path / "t"), {"ckpt_key": "encoder"}))
    with pytest.raises(UserError, match="no such file"):
        build_backbone(BackboneSpec("ijepa", str(tmp_path / "missing.pth.tar")))
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone(BackboneSpec("mae", str(tmp_path)))


# ------------------------------------------------------------------------------- this project


def save_tcjepa_checkpoint(path):
    from tcjepa.models.vit import build_encoder

    torch.manual_seed(0)
    target, context = build_encoder("vit_pico", 32, 8), build_encoder("vit_pico", 32, 8)
    config = {"model": {"encoder": "vit_pico", "patch_size": 8}, "data": {"image_size": 32}}
    torch.save({"config": config, "target_encoder": target.state_dict(), "encoder": context.state_dict(),
                "step": 7, "epoch": 1}, path)
    return target


def test_tcjepa_checkpoint_and_export(tmp_path):
    export = pytest.importorskip("tcjepa.export")
    target = save_tcjepa_checkpoint(tmp_path / "last.pt")
    bb = build_backbone(BackboneSpec("tcjepa", str(tmp_path / "last.pt")))
    grids, g = check_shapes(bb, size=(32, 48))
    assert bb.protocol_info()["step"] == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = export.final_norm(target)(target.blocks(target.embed(x)))
        torch.testing.assert_close(bb.forward_patches(x).reshape(2, 16, 64), ref)
    export.export_encoder(tmp_path / "last.pt", tmp_path / "export")
    exported = build_backbone(BackboneSpec("tcjepa", str(tmp_path / "export")))
    with torch.no_grad():
        torch.testing.assert_close(exported.forward_patches(x), bb.forward_patches(x))
    # the export's HF folder is an IJepaModel: the ijepa plugin reads it to the same features
    hf = build_backbone(BackboneSpec("ijepa", str(tmp_path / "export" / "hf")))
    with torch.no_grad():
        torch.testing.assert_close(hf.forward_patches(x), bb.forward_patches(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="predictor"):
        build_backbone(BackboneSpec("tcjepa", str(tmp_path / "last.pt"), {"ckpt_key": "predictor"}))
