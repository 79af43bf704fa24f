"""The mm engines at scale: 2 CPU ranks through mmengine's own launcher (gloo), resume of a
killed mmseg run, and ADE20k UperNet fine-tuning reaching Table 2. Marked mm and slow."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from dense_helpers import TINY_VIT_NAME, ade_tree, coco_tree, tiny_backbone  # noqa: F401 (fixtures)
from launch_helpers import driver_command, run_driver, subprocess_env

pytestmark = [pytest.mark.mm, pytest.mark.slow]
DRIVER = Path(__file__).with_name("mm_driver.py")


def _command(kind: str, data: Path, work: Path, *extra: str, ranks: int = 1) -> list[str]:
    return driver_command(DRIVER, kind, data, work, *extra, ranks=ranks)


@pytest.mark.parametrize("kind,tree", [("seg", "ade_tree"), ("det", "coco_tree")])
def test_two_gloo_ranks_through_mmengines_launcher(kind, tree, request, tmp_path):
    data = request.getfixturevalue(tree)
    work = tmp_path / "work"
    run_driver(_command(kind, data, work, "--iters", "2", ranks=2), timeout=600)
    result = json.loads((work / "driver.json").read_text())
    assert result["ranks"] == 2 and result["mm_world_size"] == 2
    assert result["metrics"] and all(math.isfinite(v) for v in result["metrics"].values())
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_2.pth")


def test_killed_mmseg_training_resumes_from_its_last_checkpoint(ade_tree, tmp_path):
    proc = subprocess.Popen(_command("seg", ade_tree, tmp_path, "--iters", "60", "--checkpoint-every", "2"),
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    pointer = tmp_path / "last_checkpoint"  # mmengine rewrites it after each complete save
    while time.time() < deadline and not pointer.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(Path(pointer.read_text().strip()).stem.split("_")[1])
    assert killed_at < 60 and not (tmp_path / "driver.json").exists()
    done = run_driver(_command("seg", ade_tree, tmp_path, "--iters", "60", "--checkpoint-every", "2", "--resume"),
                      timeout=600)
    assert "resumed" in (done.stdout + done.stderr).lower()
    assert (tmp_path / "last_checkpoint").read_text().strip().endswith("iter_60.pth")
    # mmengine deletes the oldest kept checkpoint before writing the next: two are kept so a kill
    # mid-save never leaves `last_checkpoint` naming a deleted file
    assert sorted(p.name for p in tmp_path.glob("iter_*.pth")) == ["iter_58.pth", "iter_60.pth"]
    assert json.loads((tmp_path / "driver.json").read_text())["metrics"]


def test_ade20k_upernet_finetuning_trains_the_backbone_and_reaches_table2(ade_tree, tiny_backbone, tmp_path):
    from evals.cli import main
    from evals.segmentation.upernet_finetune import TrainableBackbone, spread_blocks
    from evals.results import read_runs
    from evals.tables import write_tables

    assert spread_blocks(12) == [2, 5, 8, 11] and spread_blocks(24) == [5, 11, 17, 23] and spread_blocks(2) == [0, 0, 0, 1]
    module = TrainableBackbone(backbone=tiny_backbone, blocks=[0, 1])
    maps = module(torch.randn(1, 3, 40, 40))
    assert [m.shape for m in maps] == [torch.Size([1, 32, 5, 5])] * 2
    maps[0].sum().backward()
    assert module.backbone.vit.blocks[0].attn.qkv.weight.grad is not None

    argv = ["ade20k-ft", "--backbone", TINY_VIT_NAME, "--data", str(ade_tree), "--iters", "3", "--batch-size", "2",
            "--crop-size", "32", "--decode-channels", "16", "--device", "cpu", "--out", str(tmp_path / "runs"),
            "--pretraining-data", "IN-1k"]
    assert main(argv) == 0
    write_tables(tmp_path / "tables", tmp_path / "runs")
    other = next((tmp_path / "tables").glob("other_*.md")).read_text()  # a tiny ViT is no paper table's arch
    assert "ADE20k fine-tuned mIoU" in other and "| measured |" in other
    record = json.loads((tmp_path / "runs" / "ade20k_ft_metrics.json").read_text())
    for run in read_runs(tmp_path / "runs"):  # the same numbers, recorded as Table 2's ViT-H/14, land there
        path = Path(run.pop("path"))
        path.write_text(json.dumps({**run, "arch": "ViT-H/14"}))
    table2 = write_tables(tmp_path / "tables", tmp_path / "runs")[1].with_suffix(".md").read_text()
    assert "ADE20k fine-tuned mIoU" in table2 and "| measured |" in table2
    assert record["protocol"]["trained"] == "backbone + head" and record["protocol"]["engine"] == "mmseg"
