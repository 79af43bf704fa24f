"""CPU smoke tests of the benchmark commands (tiny models, seconds)."""
import csv
import json

import pytest
import torch

from benchmarks import loader, scaling, train_step


def test_train_step_tiny_cpu(tmp_path):
    out = train_step.main(["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--pool", "2",
                           "--variants", "ijepa,tc_n8_xattn,tc_n8_block", "--out", str(tmp_path)])
    rows = {r["variant"]: r for r in out["rows"]}
    assert set(rows) == {"ijepa", "tc_n8_xattn", "tc_n8_block"}
    for r in rows.values():
        assert r["status"] == "ok", r
        assert r["img_per_s"] > 0 and r["step_ms"] > 0
        assert torch.isfinite(torch.tensor(r["loss"]))
        assert r["gflop_per_img"] > 0 and r["tflops"] > 0
        assert r["mfu"] is None  # no peak known for a CPU unless --peak-tflops
    # Text conditioning adds work; the literal 'block' reading adds the most.
    assert rows["ijepa"]["gflop_per_img"] < rows["tc_n8_xattn"]["gflop_per_img"] < rows["tc_n8_block"]["gflop_per_img"]
    assert rows["tc_n8_xattn"]["slowdown_vs_ijepa"] > 0
    assert any("block / xattn" in r["ratio"] for r in out["ratios"])
    data = json.loads((tmp_path / "train_step_tiny_cpu.json").read_text())
    for key in ("device", "torch", "commit", "time_utc"):
        assert data["meta"][key]
    with (tmp_path / "train_step_tiny_cpu.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and {"img_per_s", "peak_mem_gib", "device", "torch", "commit"} <= set(table[0])
    assert table[0]["command"].startswith("python -m benchmarks.train_step ")  # every row names what made it


def test_train_step_profile_fsdp_and_known_flops(tmp_path):
    """--flops-from takes GFLOP/img from an earlier count instead of counting; --profile writes
    a per-category table whose shares add up to 1; --fsdp runs the step sharded by FSDP2 in a
    gloo group of one and gives the same loss as the plain step (nothing is split); so does
    --loop-syncs, the step with the loop's host syncs."""
    common = ["--device", "cpu", "--tiny", "--steps", "1", "--warmup", "1", "--pool", "2", "--variants", "tc_n8_xattn"]
    known = tmp_path / "known.json"
    known.write_text(json.dumps({"rows": [{"model": "vit_pico", "variant": "tc_n8_xattn", "batch": 8,
                                           "act_ckpt": False, "gflop_per_img": 123.0}]}))
    plain = train_step.main(common + ["--flops-from", str(known), "--profile", "2", "--out", str(tmp_path)])
    row = plain["rows"][0]
    assert row["gflop_per_img"] == 123.0 and row["flops_source"] == "--flops-from"
    assert row["tflops"] == pytest.approx(123.0 * row["img_per_s"] / 1e3)
    with (tmp_path / "train_step_tiny_cpu_profile.csv").open() as f:
        profile = list(csv.DictReader(f))
    assert {"matmul", "attention"} <= {r["category"] for r in profile}
    assert sum(float(r["share"]) for r in profile) == pytest.approx(1.0)
    top = (tmp_path / "train_step_tiny_cpu_profile_vit_pico_tc_n8_xattn.txt").read_text()
    assert "aten::" in top
    assert top.startswith("# ") and "commit" in top.splitlines()[0]  # the list names what made it

    sharded = train_step.main(common + ["--fsdp", "--no-flops", "--out", ""])["rows"][0]
    assert sharded["status"] == "ok" and sharded["fsdp"] is True
    assert sharded["loss"] == pytest.approx(row["loss"], rel=1e-5)
    assert not torch.distributed.is_initialized()  # the benchmark tears its group down
    synced = train_step.main(common + ["--loop-syncs", "--no-flops", "--out", ""])["rows"][0]
    assert synced["loop_syncs"] is True and synced["loss"] == pytest.approx(row["loss"], rel=1e-6)


def test_flop_count_is_exact_for_the_encoder_matmuls():
    """The meta-device count equals 2 * MACs of the linear layers, checked for I-JEPA's
    target encoder alone: a forward of K tokens through L blocks of width d costs
    L * 2 * K * (12 d^2) for qkv + proj + MLP, plus attention 2 * 2 * K^2 * d per block."""
    from torch.utils.flop_counter import FlopCounterMode

    from tcjepa.models import vit

    # As the benchmark counts: on the meta device, where attention decomposes into counted
    # matmuls (the CPU flash kernel has no FLOP formula in torch.utils.flop_counter).
    vit.sincos_2d.cache_clear()
    try:
        with torch.device("meta"):
            enc = vit.build_encoder("vit_pico", 64, 8).eval()
    finally:
        vit.sincos_2d.cache_clear()
    x = torch.empty(2, 3, 64, 64, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        enc.forward_features(x)
    d, L, K, B = 64, 2, 64, 2
    per_block = 2 * K * 12 * d * d + 2 * 2 * K * K * d
    patch = 2 * K * (3 * 8 * 8) * d
    assert fc.get_total_flops() == B * (L * per_block + patch)


def test_loader_smoke(tmp_path):
    out = loader.main(["--images", "8", "--batch", "4", "--workers", "0", "--repeats", "1", "--batches", "1",
                       "--out", str(tmp_path)])
    rows = out["rows"]
    assert rows[0]["img_per_s"] > 0 and rows[0]["decode_ms"] > 0
    assert (tmp_path / "loader_cpu.json").is_file() and (tmp_path / "loader_cpu.csv").is_file()


def test_scaling_formula_by_hand():
    P, Pt, Pe, Pb = 8, 600e6, 500e6, 20e6
    facts = dict(Pt=Pt, Pe=Pe, Pblock=Pb, flops_per_img=1e12)
    r = scaling.estimate(facts, P, 2048, "fsdp", 2, 4, True, act_per_img=0.1 * 2**30, node=8, mfu=0.5,
                         peak=1e15, nvlink=400e9, network=50e9)
    assert r["per_gpu_batch"] == 256
    assert r["states_gib"] == pytest.approx((16 * Pt + 4 * Pe) / P / 2**30)
    assert r["activations_gib"] == pytest.approx(25.6)
    comm = 7 / 8 * (2 * (2 * Pt + Pe) + 4 * Pt)
    assert r["comm_gb"] == pytest.approx(comm / 1e9)
    assert r["comm_ms"] == pytest.approx(1e3 * comm / 400e9)
    assert r["compute_ms"] == pytest.approx(1e3 * 256e12 / 0.5e15)
    h = scaling.estimate(facts, 32, 2048, "hsdp", 2, 4, True, 0.1 * 2**30, 8, 0.5, 1e15, 400e9, 50e9)
    assert h["inter_node_gb"] == pytest.approx(2 * 3 / 4 * 4 * Pt / 8 / 1e9)


def test_scaling_main_on_vit_base(tmp_path):
    out = scaling.main(["--model", "vit_base", "--gpus", "8,32", "--flop-batch", "2", "--out", str(tmp_path)])
    f = out["facts"]
    assert 85e6 < f["Pe"] < 87e6  # ViT-B/16 without class token and head: 85.8M
    assert f["flops_per_img"] > 3 * 2 * f["Pe"] * f["context"]  # at least fwd+bwd of the context encoder
    assert {r["gpus"] for r in out["rows"]} == {8, 32}
    assert (tmp_path / "scaling_vit_base.json").is_file()
