"""Bad command lines and configs: one line on stderr, no traceback, non-zero exit.

Table-driven over tcjepa-train, tcjepa-eval and tcjepa-data, called through their ``main(argv)``
in this process; a few run the installed console scripts to prove the exit code end to end.
"""
from __future__ import annotations

import subprocess

import pytest
import torch
from reliability_helpers import VENV_BIN, child_env, tiny_overrides, train_in_process

from evals.cli import main as eval_main
from tcjepa.cli.data import main as data_main
from tcjepa.cli.train import main as train_main
from tcjepa.train.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint

MAINS = {"tcjepa-train": train_main, "tcjepa-eval": eval_main, "tcjepa-data": data_main}


@pytest.fixture(scope="module")
def files(scenes, tmp_path_factory):
    """Paths the cases refer to: the scenes, a real 2-step checkpoint, broken configs."""
    root = tmp_path_factory.mktemp("cli_files")
    run = root / "run"
    train_in_process(tiny_overrides(scenes, run, optim__max_steps=2))
    ckpt = run / checkpoint_name(2)
    state = load_checkpoint(ckpt)
    foreign = root / "foreign.pt"  # I-JEPA-like: weights of another width, no config to compare
    save_checkpoint(foreign, {**state, "config": {},
                              "encoder": {k: torch.zeros(3) for k in state["encoder"]}})
    wrong_arch = root / "wrong_arch.pt"  # says vit_micro, holds vit_pico weights
    save_checkpoint(wrong_arch, {**state, "config": {**state["config"],
                                                     "model": {**state["config"]["model"], "encoder": "vit_micro"}}})
    (root / "bad.yaml").write_text("model: {encoder: [unclosed\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "unknown.yaml").write_text("model:\n  encodr: vit_pico\n")
    (root / "loop.yaml").write_text("base: loop.yaml\n")
    (root / "notempty").mkdir()
    (root / "notempty" / "keep.txt").write_text("x")
    return {"scenes": scenes, "run": run, "ckpt": ckpt, "foreign": foreign, "wrong_arch": wrong_arch,
            "root": root, "imagenet": scenes / "imagenet"}


def T(*extra, **kw):
    """tcjepa-train argv: a valid tiny config plus the faulty bits."""
    return lambda f: tiny_overrides(f["scenes"], f["root"] / "t_out", **kw) + [e.format(**f) for e in extra]


def A(*argv):
    return lambda f: [a.format(**f) for a in argv]


# (id, command, argv builder, substring the one error line must contain)
CASES = [
    # --- tcjepa-train: config keys, types and syntax
    ("train-unknown-key", "tcjepa-train", T("model.encodr=vit_pico"), "unknown key(s) ['encodr']"),
    ("train-unknown-section", "tcjepa-train", T("trainer.lr=1"), "unknown key(s) ['trainer']"),
    ("train-wrong-type-float", "tcjepa-train", T("optim.lr=fast"), "optim.lr: expected a number"),
    ("train-wrong-type-bool", "tcjepa-train", T("train.compile=maybe"), "train.compile: expected true/false"),
    ("train-wrong-type-int", "tcjepa-train", T("optim.batch_size=8.5"), "optim.batch_size: expected an integer"),
    ("train-bad-choice", "tcjepa-train", T("model.conditioning=film"), "'film' is not one of"),
    ("train-tuple-length", "tcjepa-train", T("mask.target_scale=[0.1]"), "expected 2 values"),
    ("train-override-no-equals", "tcjepa-train", T("optim.lr"), "expected key=value"),
    ("train-override-bad-key", "tcjepa-train", T("model..encoder=vit_pico"), "malformed key"),
    ("train-override-section-scalar", "tcjepa-train", T("model=3"), "expected a mapping"),
    ("train-missing-config", "tcjepa-train", A("--config", "{root}/nope.yaml"), "config file not found"),
    ("train-invalid-yaml", "tcjepa-train", A("--config", "{root}/bad.yaml"), "invalid YAML"),
    ("train-yaml-not-mapping", "tcjepa-train", A("--config", "{root}/list.yaml"), "top level must be a mapping"),
    ("train-yaml-unknown-key", "tcjepa-train", A("--config", "{root}/unknown.yaml"), "unknown key(s) ['encodr']"),
    ("train-yaml-base-loop", "tcjepa-train", A("--config", "{root}/loop.yaml"), "loops back"),
    # --- tcjepa-train: values that only make sense together
    ("train-size-not-divisible", "tcjepa-train", T("data.image_size=30"), "not divisible by model.patch_size=8"),
    ("train-bad-scale-range", "tcjepa-train", T("mask.target_scale=[0.5,0.1]"), "0 < low <= high <= 1"),
    ("train-accum-not-divisor", "tcjepa-train", T("optim.grad_accum=3"), "not divisible by optim.grad_accum=3"),
    ("train-unknown-backbone", "tcjepa-train", T("model.encoder=vit_gigantic"), "'vit_gigantic' is not a registered ViT"),
    # --- tcjepa-train: data
    ("train-missing-data-folder", "tcjepa-train", T("data.root={root}/no_such_data"), "data folder not found"),
    ("train-wrong-data-layout", "tcjepa-train", T("data.root={imagenet}"), "captions file not found"),
    ("train-batch-larger-than-data", "tcjepa-train", T("optim.batch_size=128"), "fewer than one batch"),
    ("train-missing-shards", "tcjepa-train", T("data.format=wds", "data.shards={root}/none-{{000..003}}.tar"), "none-"),
    ("train-missing-text-cache", "tcjepa-train", T("text.enabled=true", "data.text_cache={root}/no_cache"), "no_cache"),
    ("train-missing-text-encoder", "tcjepa-train", T("text.enabled=true", "text.encoder={root}/no_encoder"), "no_encoder"),
    # --- tcjepa-train: checkpoints
    ("train-resume-missing-file", "tcjepa-train", T("train.resume={root}/nope.pt"), "no such checkpoint file"),
    ("train-resume-other-arch", "tcjepa-train", T("train.resume={ckpt}", model__predictor_depth=3),
     "different model config {'predictor_depth': (2, 3)}"),
    ("train-resume-text-mismatch", "tcjepa-train", T("train.resume={ckpt}", "text.enabled=true",
                                                    "text.encoder={root}/no_encoder"), "no_encoder"),
    ("train-resume-foreign-weights", "tcjepa-train", T("train.resume={foreign}"), "weights do not fit the requested model"),
    ("train-resume-empty-folder", "tcjepa-train", T("train.resume={root}/notempty"), "holds no checkpoint"),
    # --- tcjepa-eval
    ("eval-unknown-backbone", "tcjepa-eval", A("linear", "--backbone", "mae", "--weights", "x", "--data", "{imagenet}"),
     "unknown backbone"),
    ("eval-missing-weights", "tcjepa-eval", A("linear", "--backbone", "ijepa", "--weights", "{root}/nope.pth",
                                              "--data", "{imagenet}"), "nope.pth"),
    ("eval-no-backbone", "tcjepa-eval", A("linear", "--data", "{imagenet}"), "--ckpt"),
    ("eval-ckpt-and-backbone", "tcjepa-eval", A("linear", "--ckpt", "{ckpt}", "--backbone", "dinov2", "--data",
                                                "{imagenet}"), "give one or the other"),
    ("eval-wrong-data-layout", "tcjepa-eval", A("linear", "--ckpt", "{ckpt}", "--data", "{scenes}", "--device", "cpu"),
     "train/<class>"),
    ("eval-ckpt-arch-mismatch", "tcjepa-eval", A("linear", "--ckpt", "{wrong_arch}", "--data", "{imagenet}",
                                                 "--device", "cpu"), "does not match"),
    ("eval-ckpt-not-a-checkpoint", "tcjepa-eval", A("linear", "--ckpt", "{root}/bad.yaml", "--data", "{imagenet}",
                                                    "--device", "cpu"), "bad.yaml"),
    ("eval-size-not-divisible", "tcjepa-eval", A("linear", "--ckpt", "{ckpt}", "--image-size", "30", "--data",
                                                 "{imagenet}", "--device", "cpu"), "not divisible by the patch size 8"),
    ("eval-tables-missing-runs", "tcjepa-eval", A("tables", "--out", "{root}/tables", "--runs", "{root}/no_runs"),
     "no such folder"),
    # --- tcjepa-data
    ("data-to-wds-missing-root", "tcjepa-data", A("to-wds", "--root", "{root}/nope", "--out", "{root}/shards"), "nope"),
    ("data-to-wds-wrong-layout", "tcjepa-data", A("to-wds", "--root", "{imagenet}", "--out", "{root}/shards"),
     "captions.jsonl"),
    ("data-from-wds-missing", "tcjepa-data", A("from-wds", "--shards", "{root}/x-{{0..3}}.tar", "--out", "{root}/o"),
     "x-"),
    ("data-masks-missing-config", "tcjepa-data", A("masks", "--config", "{root}/nope.yaml", "--out", "{root}/m.png"),
     "config file not found"),
    ("data-masks-bad-override", "tcjepa-data", A("masks", "mask.num_targets=many", "--out", "{root}/m.png"),
     "mask.num_targets: expected an integer"),
    ("data-masks-not-divisible", "tcjepa-data", A("masks", "data.image_size=30", "model.patch_size=8",
                                                  "--out", "{root}/m.png"), "not divisible"),
    ("data-scenes-not-empty", "tcjepa-data", A("scenes", "--out", "{root}/notempty", "--train", "2", "--val", "1",
                                               "--quiet"), "notempty"),
    ("data-text-cache-missing-data", "tcjepa-data", A("text-cache", "--data", "{root}/nope", "--encoder", "minilm"),
     "nope"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_nonzero(case, files, capsys):
    _, command, build, expected = case
    argv = build(files)
    code = MAINS[command](argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code not in (0, None), f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("command, build, expected", [
    ("tcjepa-train", T("model.encodr=vit_pico"), "unknown key(s)"),
    ("tcjepa-data", A("to-wds", "--root", "{root}/nope", "--out", "{root}/shards"), "nope"),
], ids=["train-config", "data"])
def test_console_scripts_exit_code_end_to_end(files, command, build, expected):
    proc = subprocess.run([str(VENV_BIN / command), *build(files)], capture_output=True, text=True,
                          env=child_env(), timeout=180)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr and expected in lines[0], proc.stderr
