"""The main job end to end on the embedded captioned scenes (``make demo``).

1. generate the scenes (captions.jsonl + ImageNet / ADE20k / COCO layouts) and the text cache;
2. pretrain I-JEPA and TC-JEPA with the same encoder, budget and seed (plus, as controls,
   an untrained encoder and TC-JEPA trained on captions shuffled across images);
3. evaluate every encoder with the same protocols: linear probe on the scene labels,
   ADE20k-style linear segmentation, COCO-style detection;
4. write ``results/demo/``: comparison CSV + markdown (mean and spread over seeds), training
   curves and patch-word grounding maps.

    python -m evals.demo             # about 15 min on 2 idle CPU cores (30 min budget)
    python -m evals.demo --quick     # smoke run, a few minutes
    python -m evals.demo --backbone dinov2=/path/to/dinov2-small   # add any backbone to the table
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from evals.demo_report import SHUFFLED, UNTRAINED, draw_pictures, summarize

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "I-JEPA": REPO / "configs/cpu/scenes_ijepa.yaml",
    "TC-JEPA": REPO / "configs/cpu/scenes_tcjepa.yaml",
}
TASKS = ("linear", "ade20k", "coco", "knn", "attentive")  # the default runs the first three
TASK_RECORDS = {"linear": "in1k_linear", "ade20k": "ade20k_linear", "coco": "coco_det", "knn": "in1k_knn",
                "attentive": "in1k_attentive"}  # CLI name -> record task


@dataclass
class DemoPlan:
    train_images: int = 4000
    # 500 held-out scenes left the 12-way probe a sampling error of ~1.7 points (p ~ 0.2), as large
    # as the seed spread it was compared with; 2000 halves it.
    val_images: int = 2000
    captions_per_image: int = 6
    image_size: int = 64
    train_steps: int = 300
    batch_size: int = 64
    linear_epochs: int = 30
    # A linear head on 8x8 patch grids: 300 iterations at lr 1e-3 left it under-trained (seed 0,
    # 1000-step encoders: mIoU 8.3 / 6.5 / 7.8 for TC-JEPA / I-JEPA / untrained, vs 11.2 / 10.8 /
    # 8.7 at 1500 x 1e-2 and 11.6 for TC-JEPA at 3000 x 1e-2); on cached features it is seconds.
    seg_iters: int = 1500
    seg_lr: float = 1e-2
    # Mask R-CNN on a 2-core CPU: a narrow pyramid and fewer sampled RoIs make an iteration ~5 s
    # instead of ~10 s (the mask head dominates); scenes hold at most 4 objects. At 60 iterations
    # the three detectors took 15 of the demo's 35 minutes (timed from scratch at a54184f on a
    # busy machine), so the demo trains 36: on an idle 2-core machine (864719a) the whole demo
    # then took 15.0 min, the detectors 4.7, leaving room for a machine twice as slow.
    det_iters: int = 36
    det_train_images: int = 240
    det_val_images: int = 100
    det_pyramid_channels: int = 64
    det_rois_per_image: int = 128
    det_detections_per_image: int = 20
    det_lr: float = 0.02
    tasks: list[str] = field(default_factory=lambda: list(TASKS[:3]))
    seeds: list[int] = field(default_factory=lambda: [0])
    untrained: bool = True  # an untrained encoder of the same architecture, evaluated alike
    shuffled_control: bool = False  # TC-JEPA on captions shuffled across images (the gain must vanish)
    config_overrides: list[str] = field(default_factory=list)  # key=value for both pretraining configs


QUICK = DemoPlan(train_images=640, val_images=96, train_steps=30, linear_epochs=10, seg_iters=40, det_iters=4,
                 det_train_images=16, det_val_images=8, untrained=False)


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- data


def ensure_scenes(data: Path, plan: DemoPlan) -> None:
    from tcjepa.data.layouts import write_scene_dataset

    stamp = data / "demo_plan.json"
    want = {k: getattr(plan, k) for k in ("train_images", "val_images", "captions_per_image", "image_size")}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        log(f"scenes already in {data}")
        return
    if data.exists():
        shutil.rmtree(data)
    log(f"generating {plan.train_images} + {plan.val_images} captioned scenes in {data}")
    write_scene_dataset(data, train=plan.train_images, val=plan.val_images,
                        captions_per_image=plan.captions_per_image, image_size=plan.image_size, seed=0)
    stamp.write_text(json.dumps(want))


def caption_derangement(count: int) -> np.ndarray:
    """The control's fixed map: image i gets the captions of image perm[i] != i (count >= 2)."""
    perm = np.random.default_rng(0).permutation(count)
    return np.where(perm == np.arange(count), (perm + 1) % count, perm)


def write_shuffled_captions(data: Path) -> str:
    """The control: every image gets the captions of another image (a fixed derangement)."""
    from tcjepa.data.captions import read_captions_jsonl

    name = "captions_shuffled.jsonl"
    records = read_captions_jsonl(data / "captions.jsonl")
    perm = caption_derangement(len(records))
    lines = [json.dumps({"image": r.image, "captions": list(records[j].captions)}) for r, j in zip(records, perm)]
    (data / name).write_text("\n".join(lines) + "\n")
    return name


def ensure_text_cache(data: Path, captions_file: str, cfg) -> Path:
    from tcjepa.data.captions import read_captions_jsonl
    from tcjepa.text.cache import TextFeatureCache
    from tcjepa.text.cache_build import build_text_cache
    from tcjepa.text.encoder import FrozenTextEncoder

    out = data / "text_cache" / Path(captions_file).stem
    captions = [c for r in read_captions_jsonl(data / captions_file) for c in r.captions]
    try:
        TextFeatureCache(out).check_captions(captions)
        return out
    except (OSError, ValueError):
        pass  # missing, incomplete (the build resumes) or stale (rebuilt below)
    log(f"encoding {len(captions)} captions of {captions_file} with the frozen text encoder")
    encoder = FrozenTextEncoder(cfg.text.encoder, max_words=cfg.text.max_words)
    build_text_cache(captions, out, encoder)
    return out


def text_caches(data: Path, work: Path, plan: DemoPlan, shuffled: bool) -> tuple[Path, Optional[Path]]:
    """Word-feature caches of the true captions and, for the control, of the shuffled ones."""
    cfg = train_config("TC-JEPA", data, work, plan, 0, None)  # only its text encoder settings are used
    cache = ensure_text_cache(data, "captions.jsonl", cfg)
    return cache, ensure_text_cache(data, write_shuffled_captions(data), cfg) if shuffled else None


# ----------------------------------------------------------------------------- training


def train_config(method: str, data: Path, run_dir: Path, plan: DemoPlan, seed: int, text_cache: Optional[Path],
                 captions_file: str = "captions.jsonl"):
    from tcjepa.config import load_config

    base = CONFIGS["I-JEPA" if method == "I-JEPA" else "TC-JEPA"]
    overrides = [
        f"data.root={data}", f"data.captions_file={captions_file}", f"train.out_dir={run_dir}",
        f"train.seed={seed}", f"optim.max_steps={plan.train_steps}", f"optim.batch_size={plan.batch_size}",
        f"data.image_size={plan.image_size}", f"data.num_captions={plan.captions_per_image}",
        "train.tensorboard=false", *plan.config_overrides,
    ]
    if text_cache is not None:
        overrides.append(f"data.text_cache={text_cache}")
    return load_config(base, overrides)


def pretrain(method: str, cfg) -> Path:
    """Train (or resume) one encoder; returns its final checkpoint."""
    from tcjepa.train.checkpoint import find_resume_checkpoint, load_checkpoint
    from tcjepa.train.loop import train

    done = find_resume_checkpoint(cfg.train.out_dir)
    if done is not None:
        state = load_checkpoint(done)
        differences = config_differences(state.get("config", {}), cfg.to_dict())
        if differences:
            raise SystemExit(f"{done}: this run was trained with other settings ({'; '.join(differences)}); "
                             f"give the demo another --work folder, or delete {cfg.train.out_dir}")
        if state["step"] >= cfg.optim.max_steps:
            log(f"{method}: already trained ({done})")
            return done
    log(f"{method}: pretraining {cfg.optim.max_steps} steps -> {cfg.train.out_dir}")
    summary = train(cfg)
    return Path(summary.last_checkpoint)


# Settings that change how a run logs and checkpoints, not what it learns.
_BOOKKEEPING = {"train.out_dir", "train.log_every", "train.monitor_every", "train.ckpt_every",
                "train.keep_checkpoints", "train.resume", "train.tensorboard", "data.num_workers"}


def config_differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    """``key: saved -> wanted`` for every setting that changes what a reused run learned. A key
    the saved run predates is not a difference: it was added to the schema with its default."""
    differences = []
    for key, value in wanted.items():
        name = f"{prefix}{key}"
        if key not in saved or name in _BOOKKEEPING:
            continue
        if isinstance(value, dict) and isinstance(saved[key], dict):
            differences += config_differences(saved[key], value, f"{name}.")
        elif json.loads(json.dumps(saved[key])) != json.loads(json.dumps(value)):  # tuples == lists
            differences.append(f"{name}: {saved[key]!r} -> {value!r}")
    return differences


def untrained_checkpoint(cfg, path: Path) -> Path:
    """The same architecture at initialisation (same seed), saved like a training checkpoint."""
    import torch

    from tcjepa.models.jepa import JEPA
    from tcjepa.train.checkpoint import Checkpointer
    from tcjepa.train.checkpoint_parts import ModelWeights

    torch.manual_seed(cfg.train.seed)
    model = JEPA(cfg)
    return Checkpointer(path.parent, [ModelWeights(model)], config=cfg.to_dict()).write(path, step=0, epoch=0)


# ----------------------------------------------------------------------------- evaluation


def evaluate(backbone_args: list[str], method: str, data: Path, runs: Path, plan: DemoPlan, seed: int) -> None:
    from evals.cli import main as eval_main

    common = [*backbone_args, "--method", method, "--pretraining-data", "synthetic scenes",
              "--device", "cpu", "--out", str(runs)]
    probe = ["--data", str(data / "imagenet"), "--workers", "0", "--seed", str(seed), "--cache-dir", str(runs / "features")]
    tasks = {
        "linear": [*probe, "--epochs", str(plan.linear_epochs)],
        "knn": probe, "attentive": [*probe, "--epochs", str(plan.linear_epochs)],  # knn: linear's cached features
        "ade20k": ["--data", str(data / "ADEChallengeData2016"), "--engine", "torch",
                   "--iters", str(plan.seg_iters), "--warmup-iters", str(plan.seg_iters // 10), "--lr", str(plan.seg_lr),
                   "--crop-size", str(plan.image_size), "--batch-size", "16", "--seed", str(seed)],
        "coco": ["--data", str(data / "coco"), "--engine", "torchvision", "--max-iters", str(plan.det_iters),
                 "--warmup-iters", str(max(1, plan.det_iters // 10)), "--min-size", str(plan.image_size * 2),
                 "--max-size", str(plan.image_size * 2), "--batch-size", "4", "--lr", str(plan.det_lr),
                 "--pyramid-channels", str(plan.det_pyramid_channels),
                 "--rois-per-image", str(plan.det_rois_per_image),
                 "--detections-per-image", str(plan.det_detections_per_image),
                 "--max-train-images", str(plan.det_train_images), "--max-val-images", str(plan.det_val_images),
                 "--seed", str(seed)],
    }
    for task, args in tasks.items():
        if task not in plan.tasks:
            continue
        log(f"{method} (seed {seed}): {task}")
        code = eval_main([task, *common, *args])
        if code != 0:
            raise RuntimeError(f"tcjepa-eval {task} failed for {method} (exit {code})")


# ----------------------------------------------------------------------------- report


# ----------------------------------------------------------------------------- main


def run_directories(work: Path, seed: int, shuffled: bool) -> dict[str, Path]:
    dirs = {"I-JEPA": work / f"ijepa-s{seed}", "TC-JEPA": work / f"tcjepa-s{seed}"}
    if shuffled:
        dirs[SHUFFLED] = work / f"tcjepa-shuffled-s{seed}"
    return dirs


def eval_runs_dir(work: Path, out: Path) -> Path:
    """Eval records of one results folder: a demo and a seed study can share trained encoders."""
    return work / f"eval_runs-{out.name}"


def run_demo(plan: DemoPlan, data: Path, work: Path, out: Path, extra_backbones: list[tuple[str, str]],
             command: str = "python -m evals.demo", report_only: bool = False) -> Path:
    t0 = time.time()
    ensure_scenes(data, plan)
    runs = eval_runs_dir(work, out)
    cache, shuffled_cache = text_caches(data, work, plan, plan.shuffled_control and not report_only)
    if not report_only:
        if runs.exists():
            shutil.rmtree(runs)  # the table reflects this invocation only
        train_and_evaluate(plan, data, work, runs, cache, shuffled_cache, extra_backbones)

    csv = summarize(runs, out, command)
    run_dirs = {f"{method} s{seed}": d for seed in plan.seeds
                for method, d in run_directories(work, seed, plan.shuffled_control).items()}
    tc_cfg = train_config("TC-JEPA", data, run_dirs[f"TC-JEPA s{plan.seeds[-1]}"], plan, plan.seeds[-1], cache)
    draw_pictures(run_dirs, tc_cfg, find_checkpoint(tc_cfg), out, cache)
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    log(f"done in {(time.time() - t0) / 60:.1f} min: {csv}, {out / 'comparison.md'}, "
        f"{out / 'training_curves.png'}, {out / 'grounding_maps.png'}")
    print((out / "comparison.md").read_text())
    return csv


def find_checkpoint(cfg) -> Path:
    from tcjepa.train.checkpoint import find_resume_checkpoint

    ckpt = find_resume_checkpoint(cfg.train.out_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {cfg.train.out_dir}: run the demo without --report-only first")
    return Path(ckpt)


def train_and_evaluate(plan: DemoPlan, data: Path, work: Path, runs: Path, cache: Path,
                       shuffled_cache: Optional[Path], extra_backbones: list[tuple[str, str]]) -> None:
    for seed in plan.seeds:
        dirs = run_directories(work, seed, plan.shuffled_control)
        trained = {
            "I-JEPA": train_config("I-JEPA", data, dirs["I-JEPA"], plan, seed, None),
            "TC-JEPA": train_config("TC-JEPA", data, dirs["TC-JEPA"], plan, seed, cache),
        }
        if plan.shuffled_control:
            trained[SHUFFLED] = train_config(SHUFFLED, data, dirs[SHUFFLED], plan, seed, shuffled_cache,
                                             captions_file="captions_shuffled.jsonl")
        for method, cfg in trained.items():
            ckpt = pretrain(method, cfg)
            evaluate(["--ckpt", str(ckpt)], method, data, runs / f"seed{seed}", plan, seed)
        if plan.untrained:
            ckpt = untrained_checkpoint(trained["I-JEPA"], work / f"untrained-s{seed}" / "init.pt")
            evaluate(["--ckpt", str(ckpt)], UNTRAINED, data, runs / f"seed{seed}", plan, seed)
    for name, weights in extra_backbones:
        evaluate(["--backbone", name, "--weights", weights, "--image-size", str(plan.image_size)],
                 name, data, runs / f"seed{plan.seeds[0]}", plan, plan.seeds[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evals.demo", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small data, few steps, no controls")
    p.add_argument("--shuffled-control", action="store_true",
                   help="also train TC-JEPA on captions shuffled across images (the control of the study)")
    p.add_argument("--seeds", type=int, nargs="+", help="pretraining seeds (default: 0)")
    p.add_argument("--steps", type=int, help="pretraining steps per encoder")
    p.add_argument("--tasks", nargs="+", choices=TASKS, help="evaluations to run (default: linear ade20k coco)")
    p.add_argument("--data", type=Path, help="scenes folder (default: data/scenes or data/scenes-quick)")
    p.add_argument("--work", type=Path, help="runs folder (default: runs/demo or runs/demo-quick)")
    p.add_argument("--out", type=Path, help="results folder (default: results/demo or results/demo-quick)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="config override for both pretraining configs, e.g. --set mask.context_scale=[0.4,0.6] "
                        "(repeatable; same syntax as tcjepa-train)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results/ from the trained encoders and eval records of an earlier run")
    p.add_argument("--backbone", action="append", default=[], metavar="NAME=WEIGHTS",
                   help="also evaluate a registered backbone (dinov2, siglip2, ijepa, ...) from local weights")
    return p


def plan_from_args(args: argparse.Namespace) -> DemoPlan:
    """The plan the command line asks for; bad ``--set`` overrides fail here, before any work."""
    from dataclasses import replace

    plan = replace(QUICK if args.quick else DemoPlan())
    if args.seeds:
        plan.seeds = args.seeds
    if args.steps:
        plan.train_steps = args.steps
    if args.tasks:
        plan.tasks = args.tasks
    plan.shuffled_control = args.shuffled_control
    plan.config_overrides = [*plan.config_overrides, *args.overrides]
    for method in CONFIGS:
        train_config(method, REPO / "data/scenes", REPO / "runs/demo", plan, 0, None)  # raises ConfigError
    return plan


def main(argv: Optional[list[str]] = None) -> int:
    from tcjepa.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
    except ConfigError as e:
        print(f"error: --set: {e}", file=sys.stderr)
        return 2
    suffix = "-quick" if args.quick else ""
    extra = []
    for item in args.backbone:
        if "=" not in item:
            print(f"error: --backbone {item!r}: expected NAME=WEIGHTS", file=sys.stderr)
            return 2
        extra.append(tuple(item.split("=", 1)))
    # The command that made the numbers: a --report-only rebuild credits the run it read.
    made_by = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    run_demo(plan, args.data or REPO / f"data/scenes{suffix}", args.work or REPO / f"runs/demo{suffix}",
             args.out or REPO / f"results/demo{suffix}", extra,
             command=" ".join(["python -m evals.demo", *made_by]), report_only=args.report_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
