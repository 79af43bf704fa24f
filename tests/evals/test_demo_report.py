"""The seed statistics behind the demo's and the ablations' verdicts, on hand-made numbers."""
import math

import pandas as pd

from evals.demo_report import seed_stats, seed_verdict


def per_seed(values: dict[str, list[float]], **columns) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "task": "in1k_linear", "metric": "top1", "value": v, "seed": s,
                          "git_commit": "c0", "hardware": "cpu", **columns}
                         for m, vs in values.items() for s, v in enumerate(vs)])


def test_verdict_pairs_seeds_and_reports_the_paired_t():
    # B follows A up and down by seed, 1 point higher: the seed spread (std 5) hides what
    # the pairing shows.
    df = per_seed({"I-JEPA": [10.0, 20.0, 15.0], "TC-JEPA": [11.0, 21.5, 15.5]})
    row = seed_verdict(df, [("TC-JEPA", "I-JEPA")]).iloc[0]
    assert row.verdict == "within seed spread" and row.paired_deltas == "+1.00 +1.50 +0.50"
    assert math.isclose(row.paired_t, 1.0 / (0.5 / math.sqrt(3)))


def test_verdict_with_one_seed_or_identical_differences_has_no_t():
    assert math.isnan(seed_verdict(per_seed({"I-JEPA": [1.0], "TC-JEPA": [2.0]})).iloc[0].paired_t)
    assert math.isnan(seed_verdict(per_seed({"I-JEPA": [1.0, 2.0], "TC-JEPA": [2.0, 3.0]})).iloc[0].paired_t)


def test_stats_name_every_run_that_made_a_row():
    df = pd.concat([per_seed({"I-JEPA": [1.0]}, command="study --seeds 0"),
                    per_seed({"I-JEPA": [3.0]}, command="study --seeds 1").assign(seed=1, git_commit="c1")])
    row = seed_stats(df, "unused").iloc[0]
    assert (row["mean"], row["count"]) == (2.0, 2)
    assert row.command == "study --seeds 0 ; study --seeds 1" and row.git_commit == "c0 ; c1"
    # Without a per-seed command column, the one given names the row.
    assert seed_stats(df.drop(columns="command"), "demo").iloc[0].command == "demo"


def test_knn_and_attentive_results_enter_the_comparison(tmp_path):
    from evals.demo_report import per_seed_metrics
    from evals.results import run_record, write_run

    info = {"name": "tcjepa", "embed_dim": 128, "patch_size": 8}
    for task, value in (("in1k_knn", 31.0), ("in1k_attentive", 35.0), ("in1k_linear", 30.0)):
        write_run(run_record("TC-JEPA", info, "scenes", task, {"top1": value, "top5": 80.0}, "top1", {}), tmp_path / "seed0")
    rows = per_seed_metrics(tmp_path).set_index("task")
    assert rows.loc["in1k_knn", "value"] == 31.0 and rows.loc["in1k_attentive", "value"] == 35.0
    assert set(rows["metric"]) == {"top1"}
