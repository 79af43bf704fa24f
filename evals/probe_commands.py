"""``tcjepa-eval linear | knn | attentive``: probes on frozen features of a classification set
(ImageNet folders, CIFAR-100, iNat2018; ``--dataset``).

All three extract the features once (cached, ``evals.features``) and record, with each
result, the feature protocol swept and chosen (``evals.feature_protocols``): by default the
backbone's own (patch mean for I-JEPA / TC-JEPA, class token + patch mean for DINOv2, MAP
output for SigLIP); ``--features`` names others, ``all`` sweeps every one that applies.
"""
from __future__ import annotations

import argparse
from typing import NamedTuple, Optional

from evals.command_helpers import backbone_from_args, backbone_info, method_name, positive_int, write_record

def add_data_arguments(p: argparse.ArgumentParser, features: bool = True) -> None:
    g = p.add_argument_group("data and features")
    # not required by argparse: it may come from --config; checked before any work
    g.add_argument("--data", metavar="DIR", help="root with train/<class>/*.JPEG and val/<class>/*.JPEG (required)")
    g.add_argument("--dataset", choices=("imagenet", "cifar100", "inat18"), default="imagenet",
                   help="layout of --data: ImageNet folders, cifar-100-python, or iNat2018 JSON; names the task")
    if features:
        g.add_argument("--features", nargs="+", metavar="PROTOCOL",
                       help="feature protocols to sweep: patch_mean, cls_patch_mean, map (each with :last1 / "
                            ":last4, or both), or all (default: the backbone's own protocol)")
    g.add_argument("--selection", choices=("holdout", "val"), default="holdout",
                   help="choose the best grid point on a held-out part of train (default) or on val (recorded)")
    g.add_argument("--holdout-fraction", type=float, default=0.1,
                   help="part of train held out to choose the grid point (--selection holdout)")
    g.add_argument("--seed", type=int, default=0, help="seed of the holdout split and of the heads")
    g.add_argument("--batch-size", type=positive_int, default=64, help="feature-extraction batch size")
    g.add_argument("--workers", type=int, default=4, help="data-loading workers for extraction")
    g.add_argument("--crop-fraction", type=float, default=0.875, help="center crop = image size / resize")
    g.add_argument("--cache-dir", metavar="DIR", help="feature cache (default: DATA/.feature_cache)")


def add_linear_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    g = p.add_argument_group("linear probe")
    g.add_argument("--protocol", choices=("linear", "logreg", "both"), default="linear",
                   help="linear heads trained by SGD/AdamW, scikit-learn logistic regression, or both")
    g.add_argument("--lrs", type=float, nargs="+", help="lr grid (default: 0.001..1 for sgd, 1e-4..1e-2 for adamw)")
    g.add_argument("--epochs", type=positive_int, default=10, help="epochs of the linear heads")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd", help="optimizer of the linear heads")
    g.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of the linear heads")
    g.add_argument("--probe-batch-size", type=positive_int, default=256, help="batch size of the linear heads")


def add_knn_arguments(p: argparse.ArgumentParser) -> None:
    from evals.knn import KS, TEMPERATURE

    add_data_arguments(p)
    g = p.add_argument_group("k-NN")
    g.add_argument("--ks", type=positive_int, nargs="+", default=list(KS), help="neighbour counts swept")
    g.add_argument("--temperature", type=float, default=TEMPERATURE, help="vote weight exp(cosine / T)")


def add_attentive_arguments(p: argparse.ArgumentParser) -> None:
    from evals.attentive import LRS

    add_data_arguments(p, features=False)
    g = p.add_argument_group("attentive probe")
    g.add_argument("--lrs", type=float, nargs="+", default=list(LRS), help="AdamW lr grid (one probe each, one pass)")
    g.add_argument("--epochs", type=positive_int, default=10, help="epochs of the probes")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    g.add_argument("--probe-batch-size", type=positive_int, default=64, help="batch size of the probes")
    g.add_argument("--heads", type=int, default=0, help="attention heads (0: width / 64)")


def extract_splits(args, backbone, world, keep_tokens: bool = False):
    """(train features, val features, data settings to record, task prefix) of --data."""
    from evals.backbones import UserError
    from evals.datasets.classification import classification_splits
    from evals.datasets.imagenet import eval_transform
    from evals.features import extract_features

    if not args.data:
        raise UserError("--data DIR is required (or data: in the --config file)")
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, args.crop_fraction)
    train, val, task_prefix = classification_splits(args.dataset, args.data, transform)
    cache = args.cache_dir or f"{args.data}/.feature_cache"
    common = dict(batch_size=args.batch_size, num_workers=args.workers, device=args.device, keep_tokens=keep_tokens)
    f_train = extract_features(backbone, train, cache, desc="train", **common)
    f_val = extract_features(backbone, val, cache, desc="val", **common)
    data = {"data": str(args.data), "num_classes": len(train.classes), "crop_fraction": args.crop_fraction,
            "feature_cache": {"train": f_train.meta["key"], "val": f_val.meta["key"]},
            "extraction_batch_size": args.batch_size, "dataset": args.dataset}
    return f_train, f_val, data, task_prefix


def prepared_backbone(args):
    """(world, spec, backbone): under torchrun every rank builds it and extracts its share of
    the features; the probes are cheap, rank 0 trains them from the shared cache."""
    from evals.distributed import init_from_env

    world, args.device = init_from_env(args.device)
    spec, backbone = backbone_from_args(args)
    return world, spec, backbone


def features_record(info: dict, requested, swept: list[str], selected: str) -> dict:
    from evals.feature_protocols import describe

    return {"default": info.get("default_features"), "requested": requested, "swept": swept,
            "selected": selected, "selected_is": describe(selected)}


def record_result(args, spec, backbone, task: str, result: dict, data: dict, features: dict) -> None:
    protocol = {k: result[k] for k in ("protocol", "selected", "selected_on", "settings", "grid")} | data
    protocol["features"] = features
    write_record(args, dict(method=method_name(args, spec), backbone_info=backbone_info(spec, backbone),
                            pretraining_data=args.pretraining_data, task=task,
                            metrics={"top1": result["top1"], "top5": result["top5"]}, metric="top1",
                            protocol=protocol), curves=result.get("curves"))


class PooledFeatures(NamedTuple):
    """What the linear and k-NN probes start from: both splits' pooled features, extracted once."""

    spec: object
    backbone: object
    info: dict
    feature_sets: list[str]
    train: object
    val: object
    data: dict
    prefix: str

    def record(self, args, task: str, result: dict) -> None:
        features = features_record(self.info, args.features, self.feature_sets, result["selected"]["features"])
        record_result(args, self.spec, self.backbone, task, result, self.data, features)


def pooled_features(args) -> Optional[PooledFeatures]:
    """Extracts on every rank; None on all but the main one, which trains the probes."""
    from evals.feature_protocols import resolve_features

    world, spec, backbone = prepared_backbone(args)
    info = backbone.protocol_info()
    feature_sets = resolve_features(args.features, info)
    f_train, f_val, data, prefix = extract_splits(args, backbone, world)
    if not world.is_main:
        return None
    return PooledFeatures(spec, backbone, info, feature_sets, f_train, f_val, data, prefix)


def cmd_linear(args) -> int:
    from evals.linear import linear_probe, logreg_probe

    f = pooled_features(args)
    if f is None:
        return 0
    common = dict(feature_sets=f.feature_sets, selection=args.selection, holdout_fraction=args.holdout_fraction,
                  seed=args.seed)
    results = []
    if args.protocol in ("linear", "both"):
        results.append((f"{f.prefix}_linear", linear_probe(
            f.train, f.val, lrs=args.lrs, epochs=args.epochs, batch_size=args.probe_batch_size,
            optimizer=args.optimizer, weight_decay=args.weight_decay, device=args.device, **common)))
    if args.protocol in ("logreg", "both"):
        results.append((f"{f.prefix}_logreg", logreg_probe(f.train, f.val, **common)))
    for task, result in results:
        f.record(args, task, result)
    return 0


def cmd_knn(args) -> int:
    from evals.knn import knn_probe

    f = pooled_features(args)
    if f is None:
        return 0
    result = knn_probe(f.train, f.val, f.feature_sets, ks=args.ks, temperature=args.temperature,
                       selection=args.selection, holdout_fraction=args.holdout_fraction, seed=args.seed,
                       device=args.device)
    f.record(args, f"{f.prefix}_knn", result)
    return 0


def cmd_attentive(args) -> int:
    from evals.attentive import attentive_probe

    world, spec, backbone = prepared_backbone(args)
    f_train, f_val, data, prefix = extract_splits(args, backbone, world, keep_tokens=True)
    if not world.is_main:
        return 0
    result = attentive_probe(f_train, f_val, lrs=args.lrs, epochs=args.epochs, batch_size=args.probe_batch_size,
                             weight_decay=args.weight_decay, num_heads=args.heads, selection=args.selection,
                             holdout_fraction=args.holdout_fraction, seed=args.seed, device=args.device)
    features = {"default": "patch tokens", "requested": None, "swept": ["tokens:last1"], "selected": "tokens:last1",
                "selected_is": "patch tokens of the last block, attended by a learned query"}
    record_result(args, spec, backbone, f"{prefix}_attentive", result, data, features)
    return 0
