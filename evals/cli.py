"""``tcjepa-eval``: frozen-backbone evaluations and the paper tables.

    tcjepa-eval backbones
    tcjepa-eval linear --ckpt runs/x --data DIR/imagenet --out results/runs
    tcjepa-eval linear --backbone dinov2 --weights facebook/dinov2-base --data DIR/imagenet --features all
    tcjepa-eval linear --config configs/eval/linear_in1k.yaml --ckpt runs/x --data DIR/imagenet epochs=20
    tcjepa-eval knn --ckpt runs/x --data DIR/imagenet --out results/runs
    tcjepa-eval attentive --ckpt runs/x --data DIR/imagenet --out results/runs
    tcjepa-eval ade20k --backbone ijepa --weights IN1K-vit.h.14-300e.pth.tar --data DIR/ADEChallengeData2016
    tcjepa-eval coco --ckpt export_dir --data DIR/coco
    tcjepa-eval linear --dataset cifar100 --data DIR/cifar --ckpt runs/x    # also inat18; voc, ade20k-ft commands
    torchrun --nproc_per_node 8 -m evals.cli linear --ckpt runs/x --data DIR/imagenet  # any command, 8 GPUs
    tcjepa-eval tables --out results/ --runs results/runs

User errors (bad path, unknown backbone, mismatched checkpoint, wrong dataset layout, bad
config) print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from tcjepa.cli.help import document_defaults
from tcjepa.errors import UserError as ProjectUserError
from tcjepa.cli.rank_exit import exit_rank, leave_process_group

from evals.backbones import UserError, describe_backbones
from evals.command_helpers import add_backbone_arguments, backbone_from_args, backbone_info, method_name, write_record
from evals.distributed import init_from_env
from evals.eval_config import add_config_arguments, apply_config
from evals import probe_commands

DENSE_PROTOCOLS = {
    "ade20k": ("evals.segmentation.protocol", "ADE20k linear segmentation (mIoU / aAcc)", "ade20k_linear",
               ("mIoU", "aAcc")),
    "ade20k-ft": ("evals.segmentation.finetune_protocol", "ADE20k fine-tuning with UperNet, MMSegmentation (mIoU)",
                  "ade20k_ft", ("mIoU", "aAcc")),
    "voc": ("evals.segmentation.voc_protocol", "Pascal VOC 2012 linear segmentation (mIoU / aAcc)", "voc_linear",
            ("mIoU", "aAcc")),
    "coco": ("evals.detection.protocol", "COCO detection with a simple feature pyramid (box / mask AP)", "coco_det",
             ("bbox_AP", "box_AP", "bbox_mAP", "segm_AP")),
}
PROBES = {
    "linear": (probe_commands.add_linear_arguments, probe_commands.cmd_linear,
               "ImageNet-layout linear probe (grid of heads in one pass, or logreg)",
               "Extract frozen features once (cached), then train linear heads over a grid of lrs x feature "
               "protocols (the backbone's own by default; last 1 / last 4 blocks) in one pass, and/or "
               "scikit-learn logistic regression; report top-1/top-5 on val."),
    "knn": (probe_commands.add_knn_arguments, probe_commands.cmd_knn,
            "weighted k-NN on cached features (cosine, k in {10, 20}, DINO's vote weights)",
            "Classify val images by their k nearest train images in cosine similarity, votes weighted "
            "exp(similarity / T) as in DINO's evaluation; report top-1/top-5 on val."),
    "attentive": (probe_commands.add_attentive_arguments, probe_commands.cmd_attentive,
                  "attentive probe: a learned query cross-attends to the frozen patch tokens",
                  "Cache the last block's patch tokens once, then train one cross-attention block with a "
                  "learned query and a linear classifier per lr of the grid, in one pass; report top-1/top-5."),
}


def cmd_backbones(args) -> int:
    for name, doc in describe_backbones().items():
        print(f"{name:10s} {doc}")
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


def relax_required(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Required options may come from --config: argparse stops requiring them, we check after."""
    required = [a for a in parser._actions if a.required and a.option_strings]
    for action in required:
        action.required = False
        action.help = f"{action.help} (required, here or in --config)"
    return required


def check_required(args: argparse.Namespace, required: Sequence[argparse.Action]) -> None:
    missing = [a.option_strings[0] for a in required if getattr(args, a.dest, None) is None]
    if missing:
        raise UserError(f"`tcjepa-eval {args.command}` needs {', '.join(missing)} (on the command line or in --config)")


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its subcommand parsers (a dense protocol's options are added only when
    it is the one chosen, so ``linear`` works without the segmentation/detection stack)."""
    parser = argparse.ArgumentParser(
        prog="tcjepa-eval", description="Frozen-backbone evaluations (linear, k-NN and attentive probes, ADE20k, "
                                        "COCO) and paper tables.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {}

    p = sub.add_parser("backbones", help="list registered backbones")
    p.set_defaults(func=cmd_backbones)

    for name, (add_arguments, func, help_text, description) in PROBES.items():
        p = subparsers[name] = sub.add_parser(name, help=help_text, description=description)
        add_backbone_arguments(p)
        add_arguments(p)
        add_config_arguments(p)
        p.set_defaults(func=func)

    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text, _, _) in DENSE_PROTOCOLS.items():
        # 'resolve': the protocol may define --device / --out itself; one flag, one meaning.
        p = subparsers[name] = sub.add_parser(name, help=help_text, conflict_handler="resolve",
                                              description=f"{help_text}; protocol options come from {module_name}.")
        add_backbone_arguments(p)
        if chosen == name:  # import the protocol only when it runs: `linear` works without it
            load_protocol(module_name).add_arguments(p)
        add_config_arguments(p)
        p.set_defaults(func=make_dense_command(name))

    p = sub.add_parser("tables", help="regenerate the paper's Tables 1-5 (reported + measured) as CSV + markdown")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the CSV and markdown files")
    p.add_argument("--runs", metavar="DIR", help="folder of run JSONs (searched recursively) to merge as measured")
    p.add_argument("--reported", metavar="CSV", help="reported numbers (default: results/paper/reported.csv)")
    p.set_defaults(func=cmd_tables)
    return document_defaults(parser), subparsers


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser, subparsers = build_parser(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    required = relax_required(subparsers[chosen]) if chosen in subparsers else []
    args = parser.parse_args(argv)
    if args.command in subparsers:
        args = apply_config(parser, subparsers[args.command], argv, args)
        check_required(args, required)
    return args


def one_line(error: Exception) -> str:
    """The message of a user error on one line. Errors raised in a DataLoader worker come back
    wrapped with the worker's traceback; only the original message is the user's business."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
        status = args.func(args)
    except (UserError, ProjectUserError) as e:  # the evals' and the training side's (ConfigError, ...)
        print(f"tcjepa-eval: error: {one_line(e)}", file=sys.stderr)
        status = 2
    except FileNotFoundError as e:
        print(f"tcjepa-eval: error: {e.filename or e}: no such file or folder", file=sys.stderr)
        status = 2
    except BaseException:  # a crash (its traceback is the report) or argparse's exit
        leave_process_group()  # a torchrun rank leaves the group it joined, whatever happened
        raise
    return exit_rank(status)


if __name__ == "__main__":
    sys.exit(main())
