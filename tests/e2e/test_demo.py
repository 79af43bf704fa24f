"""The whole pipeline through the demo's entry point, on tiny data and models."""
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml

from evals.demo import DemoPlan, run_demo

TINY = DemoPlan(
    train_images=64, val_images=24, captions_per_image=3, image_size=32, train_steps=3, batch_size=16,
    linear_epochs=2, seg_iters=4, det_iters=2, det_train_images=8, det_val_images=4, seeds=[0, 1], untrained=True, shuffled_control=True,
    config_overrides=["model.encoder=vit_pico", "model.predictor_depth=2", "model.predictor_width=32",
                      "model.predictor_heads=2", "text.max_words=16", "data.num_workers=0",
                      "train.log_every=1", "train.monitor_every=1"],
)


@pytest.mark.slow
def test_demo_writes_every_artefact_with_finite_metrics(tmp_path):
    out = tmp_path / "results"
    csv = run_demo(TINY, tmp_path / "scenes", tmp_path / "runs", out, extra_backbones=[], command="pytest")
    for name in ("comparison.csv", "per_seed.csv", "verdict.csv", "comparison.md", "training_curves.png",
                 "grounding_maps.png", "plan.json"):
        assert (out / name).stat().st_size > 0, name
    df = pd.read_csv(csv)
    assert set(df.method) == {"I-JEPA", "TC-JEPA", "TC-JEPA (shuffled captions)", "untrained"}
    assert {"in1k_linear", "ade20k_linear", "coco_det"} <= set(df.task)
    for _, row in df.iterrows():
        assert math.isfinite(row["mean"]) and 0.0 <= row["mean"] <= 100.0, row.to_dict()
    assert (df.groupby("method").size() == df.groupby("method").size().iloc[0]).all()
    assert (df["count"] == 2).all()  # both seeds reach every cell

    verdict = pd.read_csv(out / "verdict.csv")
    tc_vs_i = verdict[(verdict.method == "TC-JEPA") & (verdict.baseline == "I-JEPA")]
    assert {("in1k_linear", "top1"), ("ade20k_linear", "mIoU")} <= set(zip(tc_vs_i.task, tc_vs_i.metric))
    assert set(verdict.verdict) <= {"ahead beyond seed spread", "behind beyond seed spread", "within seed spread"}
    per_seed = pd.read_csv(out / "per_seed.csv")
    row = tc_vs_i[tc_vs_i.metric == "top1"].iloc[0]
    top1 = per_seed[per_seed.metric == "top1"].pivot_table(index="seed", columns="method", values="value")
    assert row["delta"] == pytest.approx(top1["TC-JEPA"].mean() - top1["I-JEPA"].mean())
    assert "Verdict" in (out / "comparison.md").read_text()

    # --report-only rebuilds the same tables from the stored encoders and eval records.
    before = (out / "verdict.csv").read_text()
    for f in out.iterdir():
        f.unlink()
    run_demo(TINY, tmp_path / "scenes", tmp_path / "runs", out, [], command="pytest", report_only=True)
    assert (out / "verdict.csv").read_text() == before and (out / "grounding_maps.png").exists()


@pytest.mark.slow
def test_ablation_study_trains_variants_and_reuses_demo_encoders(tmp_path):
    from evals.ablations import run_ablations

    plan = replace(TINY, seeds=[0], untrained=False, shuffled_control=False, tasks=["linear", "ade20k"])
    variants = ["I-JEPA", "no regularizers", "single layer"]
    csv = run_ablations(plan, variants, tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl", command="pytest")
    df = pd.read_csv(csv)
    assert set(df.method) == set(variants) and set(df.task) == {"in1k_linear", "ade20k_linear"}
    assert (tmp_path / "abl" / "ablations.png").stat().st_size > 0
    monitors = pd.read_csv(tmp_path / "abl" / "monitors.csv").set_index("method")
    assert set(monitors.index) == set(variants) and (monitors.step == plan.train_steps).all()
    assert np.isfinite(monitors.loss_pred).all() and np.isfinite(monitors.loc["single layer", "text_gain"])
    assert 0 < monitors.loc["single layer", "attention_entropy_vs_uniform"] <= 1 + 1e-6
    assert (tmp_path / "runs" / "ijepa-s0").is_dir()  # the demo's folder: a demo run is reused, not retrained
    cfg = yaml.safe_load((tmp_path / "runs" / "tcjepa-single-layer-s0" / "config.yaml").read_text())
    assert cfg["model"]["conditioned_layers"] == [-1] and cfg["loss"]["sparse_weight"] > 0
    # A second call finds every variant evaluated and only rewrites the report.
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("checkpoint-*.pt")}
    run_ablations(plan, variants, tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl", command="pytest")
    assert mtimes == {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("checkpoint-*.pt")}
    # --report-only trains nothing: a variant without records is left out of the CSV, not trained.
    (tmp_path / "abl" / "ablations.csv").unlink()
    run_ablations(plan, [*variants, "N=1"], tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl",
                  command="pytest", report_only=True)
    assert set(pd.read_csv(tmp_path / "abl" / "ablations.csv").method) == set(variants)
    assert not (tmp_path / "runs" / "tcjepa-n-1-s0").exists()
    # ... and its rows name the study seeds that made them, not the rebuild.
    assert (pd.read_csv(tmp_path / "abl" / "per_seed.csv").command == "pytest --seeds 0").all()
    monitors = pd.read_csv(tmp_path / "abl" / "monitors.csv")
    assert monitors.git_commit.notna().all() and monitors.hardware.notna().all()
    # Seeds published by an earlier study (records gone, e.g. another machine) stay in the report;
    # a seed measured here would replace its published rows.
    per_seed = pd.read_csv(tmp_path / "abl" / "per_seed.csv")
    elsewhere = per_seed[per_seed.method == "I-JEPA"].assign(seed=7, value=1.0, command="elsewhere --seeds 7",
                                                               git_commit="abc")
    pd.concat([per_seed, elsewhere]).to_csv(tmp_path / "abl" / "per_seed.csv", index=False)
    run_ablations(plan, variants, tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl", command="pytest",
                  report_only=True)
    merged = pd.read_csv(tmp_path / "abl" / "per_seed.csv")
    assert len(merged) == len(per_seed) + len(elsewhere) and set(merged.seed) == {0, 7}
    row = pd.read_csv(tmp_path / "abl" / "ablations.csv").query("method == 'I-JEPA' and metric == 'top1'").iloc[0]
    assert row["count"] == 2 and row.command == "pytest --seeds 0 ; elsewhere --seeds 7" and "abc" in row.git_commit
    # A study of fewer variants adds to the report; it does not drop the others.
    run_ablations(plan, ["I-JEPA"], tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl", command="pytest",
                  report_only=True)
    assert set(pd.read_csv(tmp_path / "abl" / "ablations.csv").method) == set(variants)
    assert len(pd.read_csv(tmp_path / "abl" / "per_seed.csv")) == len(merged)
    # ... but only if they were made on the same scenes, with the same pretraining settings.
    stamps = {name: (tmp_path / "abl" / name).read_text() for name in ("scenes.json", "pretraining.json")}
    (tmp_path / "abl" / "scenes.json").write_text("{}")
    with pytest.raises(SystemExit, match="other scenes"):
        run_ablations(plan, variants, tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl", command="pytest",
                      report_only=True)
    (tmp_path / "abl" / "scenes.json").write_text(stamps["scenes.json"])
    settings = json.loads(stamps["pretraining.json"])
    settings["optim"]["ema"] = [0.5, 1.0]
    (tmp_path / "abl" / "pretraining.json").write_text(json.dumps(settings))
    with pytest.raises(SystemExit, match=r"another study .*optim\.ema: \[0\.5, 1\.0\] -> "):
        run_ablations(plan, variants, tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl", command="pytest",
                      report_only=True)


def test_report_only_command_drops_the_rebuild_flag_and_the_seeds():
    from evals.ablations import without_options

    argv = ["--report-only", "--seeds", "0", "1", "--work", "w", "--variants", "N=1", "--seeds=2"]
    assert without_options(argv, "--report-only", "--seeds") == ["--work", "w", "--variants", "N=1"]


def test_ablation_report_only_without_records_names_the_folder(tmp_path):
    from evals.ablations import run_ablations

    with pytest.raises(SystemExit, match="no eval records"):
        run_ablations(TINY, ["I-JEPA"], tmp_path / "scenes", tmp_path / "runs", tmp_path / "abl",
                      command="pytest", report_only=True)


def test_demo_set_overrides_reach_the_plan_and_bad_keys_fail_before_any_work(capsys):
    from evals.demo import build_parser, main, plan_from_args, train_config

    args = build_parser().parse_args(["--quick", "--set", "mask.context_scale=[0.4,0.6]", "--steps", "7"])
    plan = plan_from_args(args)
    assert plan.train_steps == 7 and "mask.context_scale=[0.4,0.6]" in plan.config_overrides
    cfg = train_config("I-JEPA", "scenes", "runs", plan, 0, None)
    assert tuple(cfg.mask.context_scale) == (0.4, 0.6)
    assert main(["--quick", "--set", "mask.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_demo_refuses_to_reuse_an_encoder_trained_with_other_settings(tmp_path):
    from evals.demo import pretrain, train_config
    from tcjepa.train.checkpoint import save_run_checkpoint

    plan = replace(TINY, train_steps=3)
    trained = train_config("I-JEPA", tmp_path / "scenes", tmp_path / "ijepa-s0", plan, 0, None)
    saved = trained.to_dict()
    saved["train"]["log_every"] = 99  # bookkeeping: not a reason to retrain
    del saved["loss"]["consist_weight"]  # a key the old run predates: not a difference either
    save_run_checkpoint(tmp_path / "ijepa-s0", 3, {"config": saved, "step": 3})
    assert pretrain("I-JEPA", trained) == tmp_path / "ijepa-s0" / "checkpoint-00000003.pt"

    asked = replace(plan, config_overrides=[*plan.config_overrides, "mask.context_scale=[0.4,0.6]"])
    with pytest.raises(SystemExit, match=r"mask\.context_scale: \[0\.85, 1\.0\] -> \[0\.4, 0\.6\]"):
        pretrain("I-JEPA", train_config("I-JEPA", tmp_path / "scenes", tmp_path / "ijepa-s0", asked, 0, None))
    with pytest.raises(SystemExit, match=r"optim\.max_steps: 3 -> 1000"):  # a 3-step run is not a 1000-step one
        pretrain("I-JEPA", train_config("I-JEPA", tmp_path / "scenes", tmp_path / "ijepa-s0",
                                        replace(plan, train_steps=1000), 0, None))


def test_ablation_records_of_another_study_are_not_resumed(tmp_path):
    from evals.ablations import forget_records_of_another_study

    data, runs = tmp_path / "scenes", tmp_path / "eval_runs"
    data.mkdir()
    (data / "demo_plan.json").write_text('{"val_images": 500}')
    forget_records_of_another_study(runs, data, TINY)
    (runs / "seed0").mkdir()
    (runs / "seed0" / "record.json").write_text("{}")
    forget_records_of_another_study(runs, data, TINY)  # same study: the records stay
    assert (runs / "seed0" / "record.json").exists()
    (data / "demo_plan.json").write_text('{"val_images": 2000}')
    forget_records_of_another_study(runs, data, TINY)
    assert not (runs / "seed0").exists() and (runs / "scenes.json").read_text() == '{"val_images": 2000}'
    (runs / "seed0").mkdir()
    other_ema = replace(TINY, config_overrides=[*TINY.config_overrides, "optim.ema=[0.996,1.0]"])
    forget_records_of_another_study(runs, data, other_ema)  # same scenes, another EMA: gone too
    assert not (runs / "seed0").exists()
    assert json.loads((runs / "pretraining.json").read_text())["optim"]["ema"] == [0.996, 1.0]
