"""Export round trip: our JEPAViT == timm VisionTransformer == transformers IJepaModel."""
import json

import numpy as np
import pytest
import timm
import torch
from transformers import IJepaModel

from tcjepa.cli.export import main as export_main
from tcjepa.export import ExportError, export_encoder, final_norm, load_encoder, strip_wrapper_prefixes
from tcjepa.models.vit import build_encoder
from tcjepa.train.checkpoint import CheckpointError, save_checkpoint, save_run_checkpoint

IMG, PATCH = 32, 16
CONFIG = {"model": {"encoder": "vit_pico", "patch_size": PATCH}, "data": {"image_size": IMG}}


def trained_like_encoder(seed):
    torch.manual_seed(seed)
    enc = build_encoder("vit_pico", IMG, PATCH)
    with torch.no_grad():  # move every trainable weight off its init so a mix-up would show
        for p in enc.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return enc.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    target, online = trained_like_encoder(0), trained_like_encoder(1)
    # DDP-style prefixes, as an unwrapped-by-mistake checkpoint would have them.
    state = {
        "target_encoder": {f"module.{k}": v for k, v in target.state_dict().items()},
        "encoder": online.state_dict(),
        "config": CONFIG,
        "step": 12,
        "epoch": 1,
    }
    save_checkpoint(root / "ckpt.pt", state)
    out = export_encoder(root / "ckpt.pt", root / "export")
    return root, out, target, online


def images():
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def pooled(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def normed_tokens(model, x):
    return final_norm(model)(model.run_blocks(model.embed(x)))


def test_export_folder_layout(run):
    _, out, target, _ = run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "vit_base_patch16_224"  # vit_pico has no timm name
    assert cfg["model_args"]["embed_dim"] == 64 and cfg["model_args"]["class_token"] is False
    assert cfg["global_pool"] == "avg" and cfg["num_classes"] == 0
    assert cfg["pretrained_cfg"]["input_size"] == [3, IMG, IMG]
    assert cfg["tcjepa"]["step"] == 12
    for f in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (out / "hf" / f).is_file()


def test_timm_create_model_matches(run):
    _, out, target, _ = run
    x = images()
    args = json.loads((out / "config.json").read_text())["model_args"]
    t = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        img_size=IMG, patch_size=PATCH, embed_dim=64, depth=2, num_heads=2,
        class_token=False, global_pool="avg", num_classes=0, fc_norm=args["fc_norm"],
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(t(x), pooled(target, x), atol=1e-4, rtol=0)
        torch.testing.assert_close(t.forward_features(x), target.forward_features(x), atol=1e-4, rtol=0)
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(local(x), pooled(target, x), atol=1e-4, rtol=0)


def test_transformers_ijepa_matches(run):
    _, out, target, _ = run
    hf, loading = IJepaModel.from_pretrained(out / "hf", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    with torch.no_grad():
        hidden = hf.eval()(pixel_values=images()).last_hidden_state
    torch.testing.assert_close(hidden, normed_tokens(target, images()), atol=1e-4, rtol=0)


def test_load_encoder_from_folder_file_and_checkpoint(run):
    root, out, target, online = run
    x = images()
    for path in (out, out / "model.safetensors", root / "ckpt.pt"):
        model, info = load_encoder(path)
        assert info["patch_size"] == PATCH and info["image_size"] == IMG and info["step"] == 12
        assert not model.training
        torch.testing.assert_close(pooled(model, x), pooled(target, x), atol=1e-6, rtol=0)
    model, info = load_encoder(root / "ckpt.pt", key="encoder")
    torch.testing.assert_close(pooled(model, x), pooled(online, x), atol=1e-6, rtol=0)
    assert info["config"] == CONFIG


def test_cli_exports_newest_checkpoint_of_a_run(tmp_path):
    enc = trained_like_encoder(2)
    save_run_checkpoint(tmp_path / "run", 3, {"target_encoder": enc.state_dict(), "config": CONFIG, "step": 3})
    assert export_main([str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    model, info = load_encoder(tmp_path / "out")
    assert info["step"] == 3


def test_errors_name_the_file(tmp_path, capsys):
    enc = trained_like_encoder(3)
    no_config = tmp_path / "no_config.pt"
    save_checkpoint(no_config, {"target_encoder": enc.state_dict()})
    with pytest.raises(ExportError, match=f"{no_config}.*config"):
        export_encoder(no_config, tmp_path / "out")
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, {"target_encoder": enc.state_dict(), "config": {**CONFIG, "model": {"encoder": "vit_micro", "patch_size": PATCH}}})
    with pytest.raises(ExportError, match="does not match"):
        export_encoder(wrong, tmp_path / "out")
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"target_encoder": enc.state_dict(), "config": CONFIG})
    with pytest.raises(ExportError, match=f"{good}: no 'predictor'"):
        load_encoder(good, key="predictor")
    legacy = tmp_path / "legacy.pt"
    torch.save({"target_encoder": enc.state_dict(), "config": CONFIG, "loss": np.float64(0.3)}, legacy)
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_encoder(legacy)
    assert export_main([str(legacy), str(tmp_path / "out")]) == 1
    assert "--allow-pickle" in capsys.readouterr().err
    assert export_main([str(legacy), str(tmp_path / "out"), "--allow-pickle"]) == 0


def test_strip_wrapper_prefixes():
    state = {"module._orig_mod.blocks.0._fsdp_wrapped_module.attn.qkv.weight": 1, "norm.weight": 2}
    assert strip_wrapper_prefixes(state) == {"blocks.0.attn.qkv.weight": 1, "norm.weight": 2}
