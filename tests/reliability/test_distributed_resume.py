"""kill -9 of one rank of a 2-process torchrun run (gloo, CPU), then train.resume=auto under 2
processes again: the result is bit-identical to a 2-process run never killed, for DDP and FSDP2.

Every run goes through torchrun and the product's own entry points: the uninterrupted
reference and the resume run the ``tcjepa-train`` CLI module, the killed run the fault launcher
(which calls ``tcjepa.train.loop.train`` with a kill hook in one rank only). Besides the
weights, optimizer state, step, sampler state and logged metrics (``assert_same_run``), each
rank's torch RNG state at the end must match the reference's, both ranks must report the
resume, the run folder must hold exactly the files of the reference (rank 0 alone writes), no
process of any torchrun call may outlive it, and the checkpoint must hold full tensors.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from reliability_helpers import (
    LAUNCHER, REPO, STEPS, assert_same_run, child_env, final_state, logged_rows, tail, tiny_overrides,
)

from tcjepa.config import load_config
from tcjepa.models.jepa import JEPA
from tcjepa.train.checkpoint import LATEST_POINTER, checkpoint_name, list_checkpoints

pytestmark = pytest.mark.slow

WORLD = 2
_TAG = "RELIABILITY_TORCHRUN_TAG"  # marks every process of one torchrun call (inherited by the ranks)


def _tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag``, wherever they were reparented to."""
    needle = f"{_TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or a zombie
            continue
    return found


def _kill_tagged(tag: str) -> list[int]:
    pids = _tagged_pids(tag)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def torchrun(entry: list[str], timeout: float = 150, **faults) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 <entry>``. torchrun starts each rank
    in a session of its own, so a process-group kill would miss them: every process of the call
    is tagged in its environment, and whatever is still alive afterwards (a hung rank, a timeout)
    is killed. A clean torchrun exit leaves nothing behind, and the test checks that too."""
    tag = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", *entry]
    proc = subprocess.Popen(cmd, env={**child_env(**faults), _TAG: tag}, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        survivors = _kill_tagged(tag)
        proc.wait()
    ran = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert not survivors, f"processes {survivors} outlived torchrun\n{tail(ran)}"
    return ran


def cli(overrides: list[str]) -> subprocess.CompletedProcess:
    ran = torchrun(["-m", "tcjepa.cli.train", *overrides])
    assert ran.returncode == 0, tail(ran)
    return ran


def assert_rng_carried(out_dir: Path, reference: Path, resumed_from: list[dict]) -> None:
    """Each rank's RNG states at the last checkpoint, rank by rank. The torch stream (drop_path)
    must equal the reference's. ``train`` seeds only torch: the global numpy / python generators
    start from OS entropy in every process and nothing in tcjepa draws from them (its numpy
    randomness is keyed ``Generator``s), so they cannot equal another run's; they must come out
    of the resume exactly as the checkpoint it started from held them, per rank."""
    got, want = final_state(out_dir)["rng"], final_state(reference)["rng"]
    assert len(got) == len(want) == len(resumed_from) == WORLD
    assert not torch.equal(want[0]["torch"], want[1]["torch"])  # per-rank streams, not one copy
    for rank, (g, w, r) in enumerate(zip(got, want, resumed_from)):
        assert torch.equal(g["torch"], w["torch"]), f"rank {rank} torch RNG"
        assert torch.equal(g["numpy"]["keys"], r["numpy"]["keys"]) and g["numpy"]["pos"] == r["numpy"]["pos"]
        assert g["python"] == r["python"], f"rank {rank} python RNG"
    assert not torch.equal(got[0]["numpy"]["keys"], got[1]["numpy"]["keys"])


@pytest.mark.parametrize("mode, kill_rank, kill_step, resume_step", [
    # DDP, a non-writing rank dies mid-epoch: resume from checkpoint 2, redo step 3.
    ("ddp", 1, 3, 2),
    # FSDP2, the writing rank dies after step 7: resume from checkpoint 6, the end of epoch 0
    # (the sampler must start epoch 1 on both ranks, not replay or skip a batch).
    ("fsdp", 0, 7, 6),
])
def test_kill_one_rank_then_resume_on_two(scenes, tmp_path, mode, kill_rank, kill_step, resume_step):
    reference, out = tmp_path / "reference", tmp_path / "run"
    cli(tiny_overrides(scenes, reference, train__distributed=mode))

    overrides = tiny_overrides(scenes, out, train__distributed=mode)
    killed = torchrun([str(LAUNCHER), *overrides],
                      RELIABILITY_KILL_AT_STEP=kill_step, RELIABILITY_FAULT_RANK=kill_rank)
    assert killed.returncode != 0, tail(killed)
    # torchrun's failure report names the rank we killed and its signal (not a crash of the other).
    report = rf"rank\s*: {kill_rank} .*\n\s*exitcode\s*: -{int(signal.SIGKILL)}\b"
    assert re.search(report, killed.stderr), tail(killed)
    assert list_checkpoints(out)[-1][0] == resume_step  # killed between checkpoints
    assert (out / LATEST_POINTER).read_text().strip() == checkpoint_name(resume_step)
    resumed_from = final_state(out, resume_step)
    assert resumed_from["sampler"]["world_size"] == WORLD

    resumed = cli(overrides)
    assert resumed.stderr.count(f"resumed from {out / checkpoint_name(resume_step)} at step {resume_step}") == WORLD

    assert_same_run(out, reference)
    assert_rng_carried(out, reference, resumed_from["rng"])
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    # Full tensors in the checkpoint (every FSDP shard gathered), not rank 0's half.
    plain = JEPA(load_config(None, overrides)).encoder.state_dict()
    assert {k: v.shape for k, v in final_state(out)["encoder"].items()} == {k: v.shape for k, v in plain.items()}


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(scenes, tmp_path):
    """DDP has already averaged rank 1's NaN gradients into rank 0's when the losses are checked:
    the ranks must agree that the step is bad (the global loss), or rank 0, seeing its own finite
    loss, steps with NaN gradients and every weight turns NaN."""
    overrides = tiny_overrides(scenes, tmp_path, train__distributed="ddp", train__nan_policy="skip")
    ran = torchrun([str(LAUNCHER), *overrides], RELIABILITY_NAN_AT_FORWARD=3, RELIABILITY_FAULT_RANK=1)
    assert ran.returncode == 0, tail(ran)
    assert ran.stderr.count("non-finite loss (nan) at step 3") == WORLD, tail(ran)
    logged = [r["step"] for r in logged_rows(tmp_path) if "loss" in r]
    assert logged == [1, 2, 4, 5, 6, 7, 8]
    state = final_state(tmp_path)
    assert state["step"] == STEPS
    assert all(torch.isfinite(v).all() for part in ("encoder", "predictor", "target_encoder")
               for v in state[part].values() if v.is_floating_point())
