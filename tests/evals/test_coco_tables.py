"""COCO box and mask AP, as each engine writes them, reach Tables 2 and 4.

Each test runs ``tcjepa-eval coco`` with one engine on generated scenes, then ``tables``, and
compares the cells with the run JSON; the same run relabelled as a ViT-H/14 on IN-1k lands in
Table 2 instead."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from global_helpers import save_ijepa_pth_tar

from evals.cli import main
from evals.results import read_runs

TINY_COCO = ["--max-iters", "2", "--warmup-iters", "1", "--min-size", "64", "--max-size", "64",
             "--pyramid-channels", "16", "--rois-per-image", "16", "--max-val-images", "4"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from tcjepa.data.layouts import write_scene_dataset

    root = tmp_path_factory.mktemp("coco_scenes")
    write_scene_dataset(root, train=8, val=4, captions_per_image=1, image_size=64, seed=0, progress=False)
    return root


def measured(out, stem) -> pd.DataFrame:
    df = pd.read_csv(out / f"{stem}.csv", keep_default_na=False, dtype=str)
    return df[df["source"] == "measured"].reset_index(drop=True)


def cell(value) -> str:
    return f"{value:.1f}"


def check_coco_cells(tmp_path, scenes, engine):
    save_ijepa_pth_tar(tmp_path / "w.pth.tar", img=64)
    runs = tmp_path / "runs"
    assert main(["coco", "--backbone", "ijepa", "--weights", str(tmp_path / "w.pth.tar"), "--device", "cpu",
                 "--data", str(scenes / "coco"), "--engine", engine, *TINY_COCO, "--out", str(runs),
                 "--pretraining-data", "CC27M", "--method", f"probe-{engine}"]) == 0
    (record,) = read_runs(runs)
    assert record["protocol"]["protocol"]["engine"] == engine
    box, mask = record["metrics"]["bbox_AP"], record["metrics"]["segm_AP"]
    assert main(["tables", "--out", str(tmp_path / "t"), "--runs", str(runs)]) == 0
    t4 = measured(tmp_path / "t", "table4_image_text_pretraining")
    assert list(t4["method"]) == [f"probe-{engine}"]
    assert (t4.loc[0, "COCO box AP"], t4.loc[0, "COCO mask AP"]) == (cell(box), cell(mask))
    assert len(measured(tmp_path / "t", "table2_vith14_dense_and_transfer")) == 0

    path = record.pop("path")
    record.update(arch="ViT-H/14", pretraining_data="IN-1k")
    with open(path, "w") as f:
        json.dump(record, f)
    assert main(["tables", "--out", str(tmp_path / "t2"), "--runs", str(runs)]) == 0
    t2 = measured(tmp_path / "t2", "table2_vith14_dense_and_transfer")
    assert (t2.loc[0, "COCO box AP"], t2.loc[0, "COCO mask AP"]) == (cell(box), cell(mask))
    assert len(measured(tmp_path / "t2", "table4_image_text_pretraining")) == 0


@pytest.mark.slow
def test_torchvision_engine_results_reach_tables_2_and_4(tmp_path, scenes):
    check_coco_cells(tmp_path, scenes, "torchvision")


@pytest.mark.slow
@pytest.mark.mm
def test_mmdet_engine_results_reach_tables_2_and_4(tmp_path, scenes):
    check_coco_cells(tmp_path, scenes, "mmdet")
