import glob

import pytest

from tcjepa.config import ConfigError, load_config


# Training configs; configs/eval/ holds evaluation protocols, loaded by tests/evals/test_eval_configs.py.
TRAINING_CONFIGS = sorted(p for p in glob.glob("configs/**/*.yaml", recursive=True) if not p.startswith("configs/eval/"))


@pytest.mark.parametrize("path", TRAINING_CONFIGS)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {encoder: vit_small}\noptim: {lr: 0.002}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {epochs: 7}\n")
    cfg = load_config(tmp_path / "b.yaml", ["mask.target_scale=[0.1,0.2]", "model.conditioned_layers=[0, 2]"])
    assert (cfg.model.encoder, cfg.optim.lr, cfg.optim.epochs) == ("vit_small", 0.002, 7)
    assert cfg.mask.target_scale == (0.1, 0.2) and cfg.model.conditioned_layers == [0, 2]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown key"),
        (["nosection.x=1"], "unknown key"),
        (["optim.lr=fast"], "expected a number"),
        (["optim.epochs=1.5"], "expected an integer"),
        (["text.enabled=maybe"], "expected true/false"),
        (["model.caption_pool=median"], "not one of"),
        (["mask.target_scale=[0.1]"], "expected 2 values"),
        (["data.image_size=100"], "not divisible"),
        (["mask.context_scale=[0.9,0.5]"], "0 < low <= high <= 1"),
        (["optim"], "expected key=value"),
        (["optim.batch_size=10", "optim.grad_accum=3"], "not divisible"),
    ],
)
def test_bad_overrides_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "unknown.yaml").write_text("model: {encoderr: vit_base}\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml.*encoderr"):
        load_config(tmp_path / "unknown.yaml")


def test_exponent_floats_without_a_dot(tmp_path):
    # PyYAML reads "1e-4" as a string (YAML 1.1); a number field takes it as the float it means.
    (tmp_path / "a.yaml").write_text("optim: {lr: 1e-3}\n")
    cfg = load_config(tmp_path / "a.yaml", ["optim.start_lr=2e-05", "optim.ema=[0.98, 1E0]"])
    assert (cfg.optim.lr, cfg.optim.start_lr, cfg.optim.ema) == (1e-3, 2e-5, (0.98, 1.0))
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(None, ["optim.lr=1e-4x"])
