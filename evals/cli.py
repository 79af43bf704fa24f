"""``tcjepa-eval``: frozen-backbone evaluations and the paper tables.

    tcjepa-eval backbones
    tcjepa-eval linear --ckpt runs/x/last.pt --data DIR/imagenet --out results/runs
    tcjepa-eval linear --backbone dinov2 --weights facebook/dinov2-base --data ... --protocol logreg
    tcjepa-eval ade20k --backbone ijepa --weights IN1K-vit.h.14-300e.pth.tar ...
    tcjepa-eval coco --ckpt export_dir ...
    tcjepa-eval linear --dataset cifar100 --data DIR ...      (also inat18; voc, ade20k-ft as commands)
    torchrun --nproc_per_node 8 -m evals.cli linear ...       (any command, sharded over 8 GPUs)
    tcjepa-eval tables --out results/ --runs results/runs

User errors (bad path, unknown backbone, mismatched checkpoint, wrong dataset layout)
print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from evals.backbones import BackboneSpec, UserError, available_backbones, build_backbone, describe_backbones
from evals.distributed import init_from_env

DENSE_PROTOCOLS = {
    "ade20k": ("evals.segmentation.protocol", "ADE20k linear segmentation (mIoU / aAcc)", "ade20k_linear",
               ("mIoU", "aAcc")),
    "ade20k-ft": ("evals.segmentation.finetune_protocol", "ADE20k fine-tuning with UperNet, MMSegmentation (mIoU)",
                  "ade20k_ft", ("mIoU", "aAcc")),
    "voc": ("evals.segmentation.voc_protocol", "Pascal VOC 2012 linear segmentation (mIoU / aAcc)", "voc_linear",
            ("mIoU", "aAcc")),
    "coco": ("evals.detection.protocol", "COCO detection with a simple feature pyramid (box / mask AP)", "coco_det",
             ("box_AP", "bbox_AP", "bbox_mAP", "mask_AP")),
}
METHOD_NAMES = {"tcjepa": "TC-JEPA", "ijepa": "I-JEPA", "dinov2": "DINOv2", "siglip2": "SigLIP2"}


def add_backbone_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--ckpt", metavar="PATH",
                   help="this project's training checkpoint or export folder (= --backbone tcjepa --weights PATH)")
    g.add_argument("--backbone", metavar="NAME", help=f"registered backbone: {', '.join(available_backbones())}")
    g.add_argument("--weights", metavar="PATH",
                   help="weights file/folder, or a hub id already in the local HF cache (never downloaded)")
    g.add_argument("--ckpt-key", metavar="KEY",
                   help="which encoder of a training checkpoint: target_encoder (default) or encoder")
    g.add_argument("--arch", metavar="NAME",
                   help="architecture when the weights do not say (I-JEPA: vit_huge; timm file: its model name)")
    g.add_argument("--image-size", type=int, metavar="PX", help="evaluation resolution (default: the backbone's)")
    g.add_argument("--max-num-patches", type=int, metavar="N", help="SigLIP2 NaFlex: pad sequences to N tokens")
    g.add_argument("--device", default="cuda" if _cuda() else "cpu", help="torch device (default: %(default)s)")
    g.add_argument("--method", help="method name recorded in results (default: from the backbone)")
    g.add_argument("--pretraining-data", default="unknown", help="pretraining data recorded in results")
    g.add_argument("--out", metavar="DIR", help="write the metrics JSON of the run here")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def backbone_from_args(args: argparse.Namespace):
    if args.ckpt and (args.backbone not in (None, "tcjepa") or args.weights):
        raise UserError("--ckpt PATH is shorthand for --backbone tcjepa --weights PATH; give one or the other")
    name = "tcjepa" if args.ckpt else args.backbone
    if not name:
        raise UserError("no backbone: pass --ckpt PATH, or --backbone NAME --weights PATH")
    options = {"ckpt_key": args.ckpt_key, "arch": args.arch, "image_size": args.image_size,
               "max_num_patches": args.max_num_patches}
    spec = BackboneSpec(name, args.ckpt or args.weights, {k: v for k, v in options.items() if v is not None})
    backbone = build_backbone(spec).to(args.device)
    return spec, backbone


def backbone_info(spec: BackboneSpec, backbone) -> dict:
    return {"name": spec.name, **backbone.protocol_info()}


def method_name(args, spec: BackboneSpec) -> str:
    return args.method or METHOD_NAMES.get(spec.name, spec.name)


def write_record(args, record_kwargs: dict) -> None:
    from evals.results import run_record, write_run

    record = run_record(**record_kwargs)
    line = f"{record['task']}: {record['metric']} = {record['value']:.2f}"
    if args.out:
        line += f"  -> {write_run(record, args.out)}"
    print(line)


# ----------------------------------------------------------------------------- subcommands


def cmd_backbones(args) -> int:
    for name, doc in describe_backbones().items():
        print(f"{name:10s} {doc}")
    return 0


def cmd_linear(args) -> int:
    from evals.datasets.classification import classification_splits
    from evals.datasets.imagenet import eval_transform
    from evals.features import extract_features
    from evals.linear import linear_probe, logreg_probe

    world, args.device = init_from_env(args.device)  # under torchrun: every rank extracts its share
    spec, backbone = backbone_from_args(args)
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, args.crop_fraction)
    train, val, task_prefix = classification_splits(args.dataset, args.data, transform)
    cache = args.cache_dir or f"{args.data}/.feature_cache"
    common = dict(batch_size=args.batch_size, num_workers=args.workers, device=args.device)
    f_train = extract_features(backbone, train, cache, desc="train", **common)
    f_val = extract_features(backbone, val, cache, desc="val", **common)
    if not world.is_main:  # the probes are cheap: rank 0 trains them from the shared cache
        return 0
    info = backbone_info(spec, backbone)
    data = {"data": str(args.data), "num_classes": len(train.classes), "crop_fraction": args.crop_fraction,
            "feature_cache": {"train": f_train.meta["key"], "val": f_val.meta["key"]},
            "extraction_batch_size": args.batch_size}
    results = []
    if args.protocol in ("linear", "both"):
        results.append((f"{task_prefix}_linear", linear_probe(
            f_train, f_val, lrs=args.lrs, epochs=args.epochs, batch_size=args.probe_batch_size,
            optimizer=args.optimizer, weight_decay=args.weight_decay, selection=args.selection,
            holdout_fraction=args.holdout_fraction, seed=args.seed, device=args.device)))
    if args.protocol in ("logreg", "both"):
        results.append((f"{task_prefix}_logreg", logreg_probe(
            f_train, f_val, selection=args.selection, holdout_fraction=args.holdout_fraction, seed=args.seed)))
    for task, r in results:
        protocol = {k: r[k] for k in ("protocol", "selected", "selected_on", "settings", "grid")} | data
        write_record(args, dict(method=method_name(args, spec), backbone_info=info,
                                pretraining_data=args.pretraining_data, task=task,
                                metrics={"top1": r["top1"], "top5": r["top5"]}, metric="top1", protocol=protocol))
    return 0


def split_protocol_result(result: dict, primary_choices: Sequence[str]) -> tuple[dict, str, dict]:
    """(metrics, primary metric, protocol settings) from a dense protocol's result dict."""
    if isinstance(result.get("metrics"), dict):
        metrics = dict(result["metrics"])
        settings = {k: v for k, v in result.items() if k != "metrics"}
    else:
        # None is a metric without a value (COCO's APs when no object of that size exists), not a setting.
        metrics = {k: v for k, v in result.items()
                   if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        settings = {k: v for k, v in result.items() if k not in metrics}
    if not any(v is not None for v in metrics.values()):
        raise RuntimeError(f"protocol returned no numeric metrics: {sorted(result)}")
    valued = [m for m, v in metrics.items() if v is not None]
    primary = next((m for m in primary_choices if m in valued), valued[0])
    return metrics, primary, settings


def make_dense_command(name: str):
    module_name, _, task, primary_choices = DENSE_PROTOCOLS[name]

    def run(args) -> int:
        module = load_protocol(module_name)
        world, args.device = init_from_env(args.device)  # under torchrun: one rank per GPU
        spec, backbone = backbone_from_args(args)
        result = module.run(backbone, args)
        if not world.is_main:  # every rank returns the same numbers; rank 0 records them
            return 0
        metrics, primary, settings = split_protocol_result(result, primary_choices)
        write_record(args, dict(method=method_name(args, spec), backbone_info=backbone_info(spec, backbone),
                                pretraining_data=args.pretraining_data, task=result.get("task", task),
                                metrics=metrics, metric=primary, protocol=settings))
        return 0

    return run


def load_protocol(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"{module_name} is not available ({e})") from None


def cmd_tables(args) -> int:
    from evals.tables import REPORTED_CSV, write_tables

    if args.runs and not __import__("pathlib").Path(args.runs).is_dir():
        raise UserError(f"--runs {args.runs}: no such folder")
    for path in write_tables(args.out, args.runs, args.reported or REPORTED_CSV):
        print(path)
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcjepa-eval", description="Frozen-backbone evaluations (linear probe, ADE20k, COCO) and paper tables.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list registered backbones")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("linear", help="ImageNet-layout linear probe (grid of heads in one pass, or logreg)",
                       description="Extract frozen features once (cached), then train linear heads over a grid of "
                                   "lrs x {last-layer, last-4-layers} average-pooled patch tokens, and/or "
                                   "scikit-learn logistic regression; report top-1/top-5 on val.")
    add_backbone_arguments(p)
    g = p.add_argument_group("linear probe")
    g.add_argument("--data", required=True, metavar="DIR", help="root with train/<class>/*.JPEG and val/<class>/*.JPEG")
    g.add_argument("--dataset", choices=("imagenet", "cifar100", "inat18"), default="imagenet",
                   help="layout of --data: ImageNet folders, cifar-100-python, or iNat2018 JSON (default: imagenet)")
    g.add_argument("--protocol", choices=("linear", "logreg", "both"), default="linear")
    g.add_argument("--lrs", type=float, nargs="+", help="lr grid (default: 0.001..1 for sgd, 1e-4..1e-2 for adamw)")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--probe-batch-size", type=int, default=256, help="batch size of the linear heads")
    g.add_argument("--selection", choices=("holdout", "val"), default="holdout",
                   help="choose the best head on a held-out part of train (default) or on val (recorded)")
    g.add_argument("--holdout-fraction", type=float, default=0.1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=64, help="feature-extraction batch size")
    g.add_argument("--workers", type=int, default=4, help="data-loading workers for extraction")
    g.add_argument("--crop-fraction", type=float, default=0.875, help="center crop = image size / resize")
    g.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: DATA/.feature_cache)")
    p.set_defaults(func=cmd_linear)

    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text, _, _) in DENSE_PROTOCOLS.items():
        # 'resolve': the protocol may define --device / --out itself; one flag, one meaning.
        p = sub.add_parser(name, help=help_text, conflict_handler="resolve",
                           description=f"{help_text}; protocol options come from {module_name}.")
        add_backbone_arguments(p)
        if chosen == name:  # import the protocol only when it runs: `linear` works without it
            load_protocol(module_name).add_arguments(p)
        p.set_defaults(func=make_dense_command(name))

    p = sub.add_parser("tables", help="regenerate the paper's Tables 1-5 (reported + measured) as CSV + markdown")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the CSV and markdown files")
    p.add_argument("--runs", metavar="DIR", help="folder of run JSONs (searched recursively) to merge as measured")
    p.add_argument("--reported", metavar="CSV", help="reported numbers (default: results/paper/reported.csv)")
    p.set_defaults(func=cmd_tables)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return args.func(args)
    except UserError as e:
        print(f"tcjepa-eval: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"tcjepa-eval: error: {e.filename or e}: no such file or folder", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
