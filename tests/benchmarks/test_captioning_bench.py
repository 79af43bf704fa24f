"""CPU smoke test of the captioning benchmark (tiny GIT, four scenes)."""
import json

from benchmarks import captioning


def test_captioning_benchmark_tiny_cpu(tmp_path):
    out = captioning.main(["--device", "cpu", "--families", "git", "--images", "4", "--batch-size", "2",
                           "--per-image", "2", "--max-new-tokens", "4", "--workers", "0", "--out", str(tmp_path)])
    (row,) = out["rows"]
    assert row["family"] == "git" and row["size"] == "tiny" and row["images"] == 4
    assert row["img_per_s"] > 0 and row["captions_per_s"] > 0 and row["img_per_s_after_load"] >= row["img_per_s"]
    saved = json.loads((tmp_path / "captioning_cpu.json").read_text())
    assert saved["rows"][0]["family"] == "git" and saved["meta"]["torch"]
