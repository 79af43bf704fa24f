"""CPU smoke test of the same-run comparison with the public I-JEPA code (its checkout is found
through TCJEPA_REFERENCE_IJEPA or ../shared/ref/ijepa beside the repository; never copied here)."""
import json
import os
from pathlib import Path

import pytest

from benchmarks import reference_ijepa

ROOT = Path(__file__).resolve().parents[2]


def reference_checkout() -> Path:
    candidates = [os.environ.get("TCJEPA_REFERENCE_IJEPA", "")] + [str(p / "shared/ref/ijepa") for p in ROOT.parents[:2]]
    for c in candidates:
        if c and (Path(c) / "src" / "helper.py").is_file():
            return Path(c)
    pytest.skip("no public I-JEPA checkout: set TCJEPA_REFERENCE_IJEPA to one (facebookresearch/ijepa)")


@pytest.mark.slow
def test_public_step_and_ours_in_one_run(tmp_path):
    out = reference_ijepa.main(["--reference-ijepa", str(reference_checkout()), "--device", "cpu", "--tiny",
                                "--batch-size", "2", "--steps", "1", "--warmup", "0", "--pool", "1",
                                "--rows", "ijepa eager,tc_n8 eager", "--no-flops", "--out", str(tmp_path)])
    rows = {r["row"]: r for r in out["rows"]}
    assert set(rows) == {"public ijepa", "ijepa eager", "tc_n8 eager"}
    for r in rows.values():
        assert r["status"] == "ok" and r["img_per_s"] > 0 and r["step_ms"] > 0, r
    assert rows["public ijepa"]["gflop_per_img"] > 0  # counted on its real step
    assert {"img/s: ijepa eager / public ijepa", "img/s: tc_n8 eager / ijepa eager"} <= {r["ratio"] for r in out["ratios"]}
    data = json.loads((tmp_path / "reference_ijepa_cpu.json").read_text())
    assert data["meta"]["commit"] and data["meta"]["torch"] and len(data["rows"]) == 3


def test_rejects_a_path_that_is_not_a_checkout(tmp_path):
    with pytest.raises(SystemExit, match="not an I-JEPA checkout"):
        reference_ijepa.import_reference(str(tmp_path))
