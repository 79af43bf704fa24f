import collections
import logging
import os
import random

import numpy as np
import pytest
import torch

from tcjepa.train import checkpoint as ckpt_mod
from tcjepa.train.checkpoint import (
    LATEST_POINTER,
    CheckpointError,
    checkpoint_name,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    save_run_checkpoint,
)
from tcjepa.train.rng import capture_rng_state, restore_rng_state


def training_state(step: int) -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "encoder": model.state_dict(),
        "predictor": model.state_dict(),
        "target_encoder": model.state_dict(),
        "opt": opt.state_dict(),
        "scaler": None,
        "epoch": 1,
        "step": step,
        "config": {"model": {"encoder": "vit_pico"}, "optim": {"ema": [0.996, 1.0]}},
        "rng": capture_rng_state(),
        "sampler": {"epoch": 1, "index": 7},
        "ema_momentum": 0.997,
        "loss_history": [0.5, 0.25],
    }


def test_round_trip_loads_with_weights_only(tmp_path):
    state = training_state(5)
    save_checkpoint(tmp_path / "c.pt", state)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # the contract, checked directly
    assert raw["step"] == 5 and raw["sampler"] == {"epoch": 1, "index": 7}
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["encoder"]["weight"], state["encoder"]["weight"])
    assert loaded["opt"]["param_groups"][0]["betas"] == state["opt"]["param_groups"][0]["betas"]


def test_every_type_the_checker_allows_really_loads_weights_only(tmp_path):
    state = {
        "none": None, "bool": True, "int": 2**70, "float": float("inf"), "complex": 1j, "str": "s",
        "bytes": b"b", "dtype": torch.bfloat16, "device": torch.device("cpu"), "size": torch.Size([2]),
        "tensor": torch.ones(2), "param": torch.nn.Parameter(torch.ones(1)), "list": [1, (2, {3})],
        "ordered": collections.OrderedDict(a=1), 7: "int key",
    }
    save_checkpoint(tmp_path / "c.pt", state)
    assert torch.load(tmp_path / "c.pt", weights_only=True).keys() == state.keys()


@pytest.mark.parametrize(
    "value, where",
    [
        (np.float64(0.5), "state['loss_history'][1]: numpy.float64"),
        (np.ones(2), "state['loss_history'][1]: numpy.ndarray"),
        (collections.defaultdict(int), "state['loss_history'][1]: collections.defaultdict"),
    ],
)
def test_save_refuses_values_weights_only_cannot_load(tmp_path, value, where):
    path = tmp_path / "c.pt"
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(path, {"step": 1, "loss_history": [0.1, value]})
    assert str(path) in str(e.value) and where in str(e.value)
    assert not path.exists()


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(1000)})

    def write_half_then_crash(state, f):
        f.write(b"PK\x03\x04 partial checkpoint bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "_serialize", write_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.ones(1000)})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # temp file cleaned up


def test_truncated_file_raises_checkpoint_error_naming_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, training_state(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_missing_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": RunsShellCommand(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "train.allow_pickle=true" in msg and "--allow-pickle" in msg
    assert "system" in msg  # names the refused global
    assert not marker.exists()


def test_allow_pickle_opt_in_loads_legacy_objects(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"step": 3, "mean": np.array([1.0, 2.0])}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_pickle=True)["mean"].tolist() == [1.0, 2.0]


def test_find_resume_falls_back_past_corrupted_newest(tmp_path, caplog):
    assert find_resume_checkpoint(tmp_path) is None
    for step in (10, 20):
        save_run_checkpoint(tmp_path, step, {"step": step, "w": torch.full((100,), float(step))})
    newest = tmp_path / checkpoint_name(20)
    assert (tmp_path / LATEST_POINTER).read_text().strip() == newest.name
    assert find_resume_checkpoint(tmp_path) == newest
    newest.write_bytes(newest.read_bytes()[:-200])
    with caplog.at_level(logging.WARNING):
        found = find_resume_checkpoint(tmp_path)
    assert found == tmp_path / checkpoint_name(10)
    assert load_checkpoint(found)["step"] == 10
    assert any(newest.name in r.getMessage() for r in caplog.records)


def test_find_resume_detects_flipped_bytes(tmp_path):
    for step in (1, 2):
        save_run_checkpoint(tmp_path, step, {"step": step, "w": torch.arange(4096.0)})
    newest = tmp_path / checkpoint_name(2)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor payload
    newest.write_bytes(bytes(data))
    assert find_resume_checkpoint(tmp_path) == tmp_path / checkpoint_name(1)


def test_all_corrupted_is_an_error_not_a_fresh_start(tmp_path):
    save_run_checkpoint(tmp_path, 1, {"step": 1})
    (tmp_path / checkpoint_name(1)).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="train.resume=none"):
        find_resume_checkpoint(tmp_path)


def test_resolve_resume(tmp_path):
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)
    p = save_run_checkpoint(tmp_path, 4, {"step": 4})
    assert resolve_resume("auto", tmp_path) == p
    assert resolve_resume(str(p), tmp_path / "elsewhere") == p


def test_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save_run_checkpoint(tmp_path, step, {"step": step}, keep=0)
    deleted = prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in deleted] == [checkpoint_name(1), checkpoint_name(2)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    save_run_checkpoint(tmp_path, 5, {"step": 5}, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]


def draw_all():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random(), random.gauss(0, 1))


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.randn(), random.gauss(0, 1)  # leave cached gaussians in both generators
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    expected = draw_all()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draw_all() == expected
