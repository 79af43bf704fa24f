import math

import pytest
import torch
from torch import nn

from tcjepa.config import OptimConfig
from tcjepa.models.vit import build_encoder
from tcjepa.models.jepa import ema_update
from tcjepa.train.optim import Schedules, build_optimizer, build_param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.query = nn.Parameter(torch.zeros(2, 4))
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
        self.tagged = nn.Parameter(torch.zeros(2, 2))
        self.tagged._no_weight_decay = True

    def no_weight_decay(self):
        return {"query"}


def group_names(groups, module):
    names = {id(p): n for n, p in module.named_parameters()}
    return {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}


def test_param_groups_split_and_exclude_frozen():
    toy = Toy()
    groups = group_names(build_param_groups(toy), toy)
    assert groups == {
        "decay": ["mask_token", "proj.weight"],
        "no_decay": ["norm.bias", "norm.weight", "proj.bias", "query", "tagged"],
    }


def test_param_groups_on_vit_and_shared_params_once():
    enc = build_encoder("vit_pico", 32, 16)
    groups = build_param_groups(enc, enc)  # the same module twice: each parameter once
    named = group_names(groups, enc)
    assert "pos_embed" not in named["decay"] + named["no_decay"]
    assert set(named["decay"]) == {n for n, p in enc.named_parameters() if p.ndim > 1 and n != "pos_embed"}
    assert "blocks.0.attn.qkv.bias" in named["no_decay"] and "blocks.0.norm1.weight" in named["no_decay"]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in enc.parameters())


def test_build_optimizer_uses_fused_adamw_on_cpu():
    cfg = OptimConfig()
    opt = build_optimizer(build_param_groups(Toy()), cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["fused"] for g in opt.param_groups)
    wd = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"decay": cfg.weight_decay, "no_decay": 0.0}
    assert all(g["lr"] == cfg.start_lr and g["betas"] == cfg.betas for g in opt.param_groups)


def cfg_small():
    return OptimConfig(
        warmup_epochs=2, start_lr=2e-4, lr=1e-3, final_lr=1e-6, weight_decay=0.04,
        final_weight_decay=0.4, ema=(0.996, 1.0),
    )


def test_schedules_match_closed_form():
    cfg = cfg_small()
    s = Schedules(cfg, steps_per_epoch=10, total_steps=100)  # warmup = 20 steps
    assert s.lr(0) == pytest.approx(2e-4)
    assert s.lr(10) == pytest.approx(6e-4)
    assert s.lr(20) == pytest.approx(1e-3)
    assert s.lr(60) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)  # halfway through the cosine
    assert s.lr(80) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert s.lr(100) == pytest.approx(1e-6)
    assert s.wd(0) == pytest.approx(0.04)
    assert s.wd(50) == pytest.approx(0.22)
    assert s.wd(100) == pytest.approx(0.4)
    assert s.ema(0) == pytest.approx(0.996)
    assert s.ema(25) == pytest.approx(0.997)
    assert s.ema(100) == pytest.approx(1.0)


def test_ijepa_horizon_scale_stops_short_of_the_final_values():
    s = Schedules(cfg_small(), steps_per_epoch=10, total_steps=80, horizon_scale=1.25)
    assert s.horizon == 100
    assert s.ema(80) == pytest.approx(0.996 + 0.004 * 0.8)
    assert s.lr(80) > 1e-6


def test_apply_sets_lr_everywhere_and_wd_on_decaying_group_only():
    cfg = cfg_small()
    opt = build_optimizer(build_param_groups(Toy()), cfg, "cpu")
    s = Schedules(cfg, steps_per_epoch=10, total_steps=100)
    lr, wd = s.apply(opt, 50)
    assert (lr, wd) == (s.lr(50), s.wd(50))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["lr"] == by_name["no_decay"]["lr"] == lr
    assert by_name["decay"]["weight_decay"] == wd
    assert by_name["no_decay"]["weight_decay"] == 0.0


def test_ema_update_equals_formula():
    torch.manual_seed(0)
    target = [torch.randn(3, 4), torch.randn(5)]
    online = [nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(5))]
    expected = [0.9 * t + 0.1 * o.detach() for t, o in zip(target, online)]
    ema_update(target, online, 0.9)
    for t, e in zip(target, expected):
        torch.testing.assert_close(t, e)
    with pytest.raises(ValueError, match="same order"):
        ema_update(target, online[:1], 0.9)


def test_ema_update_on_module_parameters():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    before = [p.detach().clone() for p in a.parameters()]
    ema_update(a.parameters(), b.parameters(), 1.0)  # momentum 1 = target unchanged
    assert all(torch.equal(x, y) for x, y in zip(before, a.parameters()))
    ema_update(a.parameters(), b.parameters(), 0.0)  # momentum 0 = copy of online
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_target_init_share_is_what_the_ema_updates_leave_of_the_initial_weights():
    cfg = OptimConfig(ema=(0.98, 1.0))
    s = Schedules(cfg, steps_per_epoch=10, total_steps=60)
    target, online = [torch.ones(1, dtype=torch.float64)], [torch.zeros(1, dtype=torch.float64)]
    for step in range(60):  # the loop's update order: one update per optimizer step
        ema_update(target, online, s.ema(step))
    assert s.target_init_share() == pytest.approx(target[0].item(), rel=1e-9)


def test_ijepa_ema_over_a_short_run_leaves_the_target_encoder_mostly_initial():
    ijepa = OptimConfig()  # 0.996 -> 1.0, set for ~10^5 steps
    assert Schedules(ijepa, 10, 300).target_init_share() > 0.5
    assert Schedules(ijepa, 10, 100_000).target_init_share() < 1e-6
    assert Schedules(OptimConfig(ema=(0.98, 1.0)), 10, 300).target_init_share() < 0.1
    assert Schedules(OptimConfig(ema=(0.0, 0.0)), 10, 5).target_init_share() == 0.0  # a copy each step
