"""Tables 1-5 regenerate the reported numbers of docs/SPEC.md section 8 exactly, and measured
runs join them with their provenance."""
from __future__ import annotations

import json

import pandas as pd

from evals.results import read_runs, run_record, write_run
from evals.tables import write_tables

# The paper's Tables 1-5 (docs/SPEC.md section 8), typed again here so a typo in reported.csv cannot pass unnoticed.
TABLE1 = {"I-JEPA": (72.9, 77.5, 79.3), "StoP": (74.5, 78.5, 79.6), "TC-JEPA": (75.8, 79.6, 80.4),
          "MAE": (68.0, 76.0, 77.2), "data2vec": (None, 77.3, None), "iBOT": (79.8, 81.0, None),
          "DINO": (78.1, None, None)}
TABLE3 = [("I-JEPA", "IN-21k", 77.2, 88.7, 38.2), ("CAPI", "", 79.3, 89.2, 38.7),
          ("TC-JEPA", "IN-21k", 82.1, 91.6, 41.2), ("TC-JEPA", "CC27M", 81.4, 91.2, 42.1),
          ("iBOT", "", 82.3, 92.8, 39.2), ("Franca", "", 84.5, 94.1, 41.4), ("DINOv2", "IN-21k", 84.0, 93.9, 37.8),
          ("DINOv2 (distilled)", "LVD-142M", 86.3, 93.4, 41.8), ("Web-DINO", "", 82.4, 90.7, 40.3),
          ("SigLIP", "", 80.5, 89.8, 20.5), ("SigLIP2", "", 82.5, 91.2, 24.6)]
TABLE4 = [("CLIP", "YFCC", 66.5, 43.6, 47.8), ("BLIP", "", 71.2, 43.1, 46.9), ("MaskCLIP", "", 73.7, 45.4, 50.5),
          ("SPARC", "YFCC", 73.4, 52.0, 52.3), ("DreamLIP", "YFCC", 75.2, 47.2, 49.6),
          ("TC-JEPA", "YFCC", 77.1, 54.5, 55.2), ("GroupViT", "", 69.8, 44.3, 50.1),
          ("SPARC", "CC27M", 74.1, 52.6, 54.0), ("DreamLIP", "CC30M", 78.6, 50.7, 52.4),
          ("TC-JEPA", "CC27M", 77.3, 55.6, 56.8)]


def read(out, stem):
    return pd.read_csv(out / f"{stem}.csv", keep_default_na=False)


def num(v):
    return None if v == "" else float(v)


def test_reported_tables_exact(tmp_path):
    write_tables(tmp_path)
    t1 = read(tmp_path, "table1_in1k_linear_by_size").set_index("method")
    assert list(t1.columns[2:5]) == ["ViT-B/16", "ViT-L/16", "ViT-H/14"]
    for method, values in TABLE1.items():
        assert tuple(num(t1.loc[method, c]) for c in ("ViT-B/16", "ViT-L/16", "ViT-H/14")) == values
    assert set(t1["source"]) == {"reported"}

    t2 = read(tmp_path, "table2_vith14_dense_and_transfer").set_index("method")
    assert tuple(num(v) for v in t2.loc["TC-JEPA", ["COCO box AP", "ADE20k linear mIoU", "ADE20k fine-tuned mIoU",
                                                    "iNat18 linear top-1", "VOC linear mIoU"]]) == (55.2, 39.5, 55.7, 54.8, 70.4)
    assert tuple(num(v) for v in t2.loc["I-JEPA", ["COCO box AP", "ADE20k linear mIoU", "ADE20k fine-tuned mIoU"]]) == (53.7, 36.9, 51.2)
    assert tuple(num(v) for v in t2.loc["StoP", ["COCO box AP", "ADE20k linear mIoU"]]) == (53.5, 36.6)

    t3 = read(tmp_path, "table3_large_scale_linear")
    got3 = {(r.method, r.pretraining_data): (num(r["IN-1k linear top-1"]), num(r["CIFAR-100 linear top-1"]),
                                             num(r["ADE20k linear mIoU"])) for _, r in t3.iterrows()}
    assert got3 == {(m, d): tuple(v) for m, d, *v in TABLE3}

    t4 = read(tmp_path, "table4_image_text_pretraining")
    got4 = {(r.method, r.pretraining_data, r.arch): (num(r["IN-1k linear top-1"]), num(r["COCO box AP"]),
                                                     num(r["ADE20k fine-tuned mIoU"])) for _, r in t4.iterrows()}
    assert got4[("TC-JEPA", "CC27M", "ViT-L/14")] == (81.9, 58.0, 58.8)
    assert {(m, d): v for (m, d, a), v in got4.items() if a != "ViT-L/14"} == {(m, d): tuple(v) for m, d, *v in TABLE4}

    t5 = read(tmp_path, "table5_vision_language_transfer").set_index("method")
    assert tuple(num(v) for v in t5.loc["TC-JEPA", ["Captioning CIDEr", "GQA", "VQAv2"]]) == (111.6, 46.3, 57.8)
    assert tuple(num(v) for v in t5.loc["SPARC", ["Captioning CIDEr", "GQA", "VQAv2"]]) == (109.7, 45.4, 56.2)
    md = (tmp_path / "table1_in1k_linear_by_size.md").read_text()
    assert "| TC-JEPA | IN-1k | reported | 75.8 | 79.6 | 80.4 |" in md


def record(method, data, task, metrics, primary, embed_dim=768, patch=16, tmp=None):
    info = {"name": "tcjepa", "embed_dim": embed_dim, "patch_size": patch}
    return run_record(method, info, data, task, metrics, primary, {"epochs": 1}, command=f"tcjepa-eval {task}")


def test_measured_runs_merge_with_provenance(tmp_path):
    rec = record("TC-JEPA (ours)", "ImageNet-1k", "in1k_linear", {"top1": 61.25, "top5": 90.0}, "top1")
    path = write_run(rec, tmp_path / "runs")
    assert json.loads(path.read_text())["value"] == 61.25
    for field in ("method", "backbone", "pretraining_data", "task", "metric", "value", "protocol", "command",
                  "git_commit", "hardware", "date"):
        assert field in rec
    assert len(read_runs(tmp_path / "runs")) == 1
    write_tables(tmp_path / "out", tmp_path / "runs")
    t1 = read(tmp_path / "out", "table1_in1k_linear_by_size")
    row = t1[t1["source"] == "measured"].iloc[0]
    assert row["method"] == "TC-JEPA (ours)" and row["pretraining_data"] == "IN-1k"
    assert num(row["ViT-B/16"]) == 61.2  # CSV keeps one decimal
    assert row["command"] == "tcjepa-eval in1k_linear" and row["hardware"]
    t3 = read(tmp_path / "out", "table3_large_scale_linear")
    assert (t3["source"] == "measured").sum() == 0  # IN-1k pretraining is not Table 3's
    assert len(read(tmp_path / "out", "other_measured")) == 0
    long = pd.read_csv(tmp_path / "out" / "all_results.csv", keep_default_na=False)
    assert 61.25 in set(long["value"])


def test_rows_are_placed_by_the_data_and_architecture_they_record(tmp_path):
    runs = tmp_path / "runs"
    write_run(record("A", "scenes", "in1k_linear", {"top1": 30.0, "top5": 60.0}, "top1"), runs)
    write_run(record("B", "IN-21k", "in1k_linear", {"top1": 70.0, "top5": 90.0}, "top1", 1024), runs)
    write_run(record("C", "IN-1k", "ade20k_linear", {"mIoU": 20.0, "aAcc": 70.0}, "mIoU", 768), runs)
    write_run(record("D", "IN-1k", "ade20k_linear", {"mIoU": 30.0, "aAcc": 75.0}, "mIoU", 1280, 14), runs)
    write_run(record("E", "scenes", "in1k_knn", {"top1": 25.0, "top5": 50.0}, "top1"), runs)
    write_tables(tmp_path / "out", runs)
    measured = lambda stem: read(tmp_path / "out", stem).query("source == 'measured'").set_index("method")
    assert list(measured("table1_in1k_linear_by_size").index) == []  # neither A (scenes) nor B (IN-21k)
    assert list(measured("table3_large_scale_linear").index) == ["B"]
    assert num(measured("table3_large_scale_linear").loc["B", "IN-1k linear top-1"]) == 70.0
    assert list(measured("table2_vith14_dense_and_transfer").index) == ["D"]  # C is a ViT-B/16
    other = measured("other_measured")
    assert sorted(other.index) == ["A", "C", "E"]
    assert num(other.loc["A", "IN-1k linear top-1"]) == 30.0 and num(other.loc["E", "IN-1k k-NN top-1"]) == 25.0
    assert num(other.loc["C", "ADE20k linear mIoU"]) == 20.0 and other.loc["A", "ADE20k linear mIoU"] == ""
    probes = measured("probes_measured")
    assert num(probes.loc["A", "IN-1k linear top-1"]) == 30.0 and num(probes.loc["E", "IN-1k k-NN top-1"]) == 25.0


def test_coco_metrics_without_a_value_are_empty_cells(tmp_path):
    """COCOeval has no APm when the val set has no medium object: the run records None."""
    metrics = {"bbox_AP": 12.5, "bbox_APm": None, "segm_AP": 10.0, "segm_APm": None}
    write_run(record("TC-JEPA", "CC27M", "coco_det", metrics, "bbox_AP"), tmp_path / "runs")
    write_run(record("mm", "CC27M", "coco_det", {"bbox_mAP": 7.0, "segm_mAP": None}, "bbox_mAP"), tmp_path / "runs")
    write_tables(tmp_path / "out", tmp_path / "runs")
    t4 = read(tmp_path / "out", "table4_image_text_pretraining").query("source == 'measured'").set_index("method")
    assert num(t4.loc["TC-JEPA", "COCO box AP"]) == 12.5 and num(t4.loc["TC-JEPA", "COCO mask AP"]) == 10.0
    assert t4.loc["TC-JEPA", "IN-1k linear top-1"] == ""
    assert num(t4.loc["mm", "COCO box AP"]) == 7.0 and t4.loc["mm", "COCO mask AP"] == ""
    assert "| TC-JEPA | ViT-B/16 | CC27M | measured |  | 12.5 | 10.0 |" in \
        (tmp_path / "out" / "table4_image_text_pretraining.md").read_text()
