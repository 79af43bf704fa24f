"""Shared pieces of the reliability tests: tiny configs, child runs, result comparison."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("_launcher.py")
VENV_BIN = Path(sys.executable).parent
MODEL_PARTS = ("encoder", "predictor", "target_encoder")
STEPS = 8  # 48 images / batch 8 = 6 steps per epoch: the runs cross an epoch boundary


def tiny_overrides(root, out_dir, **extra) -> list[str]:
    """A vit_pico run on 32 px scenes, CPU, fp32, text off unless ``extra`` says otherwise."""
    values = {
        "model.encoder": "vit_pico", "model.patch_size": 8, "data.image_size": 32,
        "model.predictor_depth": 2, "model.predictor_width": 32, "model.predictor_heads": 2,
        "model.drop_path": 0.1,  # the forward pass draws from the torch RNG: resume must restore it
        "data.root": str(root), "data.num_workers": 0, "data.num_captions": 2,
        "text.enabled": "false", "mask.min_keep": 2,
        "optim.batch_size": 8, "optim.max_steps": STEPS, "optim.warmup_epochs": 0.5,
        "train.out_dir": str(out_dir), "train.device": "cpu", "train.precision": "fp32",
        "train.tensorboard": "false", "train.log_every": 1, "train.monitor_every": 1000,
        "train.ckpt_every": 2, "train.keep_checkpoints": 2, "train.resume": "auto",
    }
    for k, v in extra.items():
        values[k.replace("__", ".")] = v
    return [f"{k}={v}" for k, v in values.items()]


def poisoned(forward, calls: set[int], value=float("nan")):
    """``forward`` whose call number ``n`` (1-based) in ``calls`` returns a non-finite loss; for
    ``JEPA.forward``, in-process (monkeypatch) or in a child (the fault launcher)."""
    count = [0]

    def wrapper(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        count[0] += 1
        if count[0] in calls:
            out["loss"] = out["loss"] * value
        return out

    return wrapper


def child_env(**faults) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELIABILITY_")}
    env.update({k: str(v) for k, v in faults.items()})
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    return env


def run_child(overrides: list[str], timeout: float = 240, **faults) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER), *overrides], env=child_env(**faults), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def final_state(out_dir: Path, step: int = STEPS) -> dict:
    from tcjepa.train.checkpoint import checkpoint_name, load_checkpoint

    return load_checkpoint(Path(out_dir) / checkpoint_name(step))


def logged_rows(out_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock column (img_per_s is a timing, not a result)."""
    rows = [json.loads(ln) for ln in (Path(out_dir) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in r.items() if k != "img_per_s"} for r in rows]


def assert_same_run(out_dir: Path, reference: Path) -> None:
    """Bit-identical weights, optimizer state, EMA momentum, sampler state and logged metrics."""
    got, want = final_state(out_dir), final_state(reference)
    for part in MODEL_PARTS:
        assert got[part].keys() == want[part].keys()
        for k in want[part]:
            assert torch.equal(got[part][k], want[part][k]), f"{part}.{k} differs from the uninterrupted run"
    for pid, s in want["opt"]["state"].items():
        for k, v in s.items():
            assert torch.equal(torch.as_tensor(got["opt"]["state"][pid][k]), torch.as_tensor(v)), f"opt {pid} {k}"
    assert got["step"] == want["step"] and got["sampler"] == want["sampler"]
    assert got["ema_momentum"] == want["ema_momentum"] and got["history"] == want["history"]
    rows, ref_rows = logged_rows(out_dir), logged_rows(reference)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
    assert rows == ref_rows
    summary = json.loads((Path(out_dir) / "summary.json").read_text())
    ref_summary = json.loads((Path(reference) / "summary.json").read_text())
    assert summary["final_loss"] == ref_summary["final_loss"] and summary["history"] == ref_summary["history"]


def assert_same_weights(out_dir: Path, reference: Path) -> None:
    got, want = final_state(out_dir), final_state(reference)
    for part in MODEL_PARTS:
        for k in want[part]:
            assert torch.equal(got[part][k], want[part][k]), f"{part}.{k} differs from the uninterrupted run"
    assert got["history"] == want["history"]


def tail(proc: subprocess.CompletedProcess, n: int = 3000) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-n:]}\nstderr:\n{proc.stderr[-n:]}"


def train_in_process(overrides: list[str], **kwargs):
    """``train()`` in this process with one thread, as the child runs use."""
    from tcjepa.config import load_config
    from tcjepa.train.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_config(None, overrides), **kwargs)
    finally:
        torch.set_num_threads(threads)


def the_error_line(stderr: str) -> str:
    """The one error line of a run that died mid-training: progress-bar and log lines may come
    before it, but no traceback, and exactly one line that is the error, last."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.lstrip("\r").startswith("train:")]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]
