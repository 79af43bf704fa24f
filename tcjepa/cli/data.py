"""``tcjepa-data``: make, convert and inspect pretraining data.

    tcjepa-data scenes --out data/scenes --train 10000 --val 1000
    tcjepa-data to-wds --data data/scenes --out data/shards
    tcjepa-data from-wds --shards 'data/shards/shard-{000000..000009}.tar' --out data/scenes2
    tcjepa-data masks --config configs/cpu/scenes_tcjepa.yaml --out masks.png
    tcjepa-data text-cache --data data/scenes ...
    tcjepa-data captions --images data/scenes/images/train --model models/random-blip --out data/captioned
    tcjepa-data caption-stats --data data/captioned

User errors (bad data, bad config) print one line to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time

from tcjepa.captioning.cli import add_parsers as add_captioning_parsers
from tcjepa.config import ConfigError
from tcjepa.data.errors import DataError

from .help import document_defaults
from .rank_exit import exit_rank


def _cmd_transfer(args: argparse.Namespace) -> int:
    from tcjepa.data.transfer_layouts import write_transfer_sets

    for name, root in write_transfer_sets(args.out, args.train, args.val, args.seed, args.image_size).items():
        print(f"{name}: {root}")
    return 0


def _cmd_scenes(args: argparse.Namespace) -> int:
    from tcjepa.data.layouts import write_scene_dataset

    start = time.perf_counter()
    summary = write_scene_dataset(args.out, train=args.train, val=args.val,
                                  captions_per_image=args.captions_per_image, image_size=args.image_size,
                                  seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                                  progress=not args.quiet)
    seconds = time.perf_counter() - start
    total = summary["train"] + summary["val"]
    print(f"wrote {summary['train']} train + {summary['val']} val scenes ({summary['classes']} classes, "
          f"{summary['captions_per_image']} captions each) to {args.out} in {seconds:.1f} s "
          f"({total / seconds:.0f} images/s)")
    return 0


def _cmd_to_wds(args: argparse.Namespace) -> int:
    from tcjepa.data.wds import write_wds_shards

    shards = write_wds_shards(args.root, args.out, args.captions_file, args.shard_size, args.prefix,
                              progress=not args.quiet)
    last = len(shards) - 1
    print(f"wrote {len(shards)} shard(s): {args.out}/{args.prefix}-{{000000..{last:06d}}}.tar")
    return 0


def _cmd_from_wds(args: argparse.Namespace) -> int:
    from tcjepa.data.wds import extract_wds

    count = extract_wds(args.shards, args.out, args.captions_file, progress=not args.quiet)
    print(f"wrote {count} images and {args.out}/{args.captions_file}")
    return 0


def _cmd_masks(args: argparse.Namespace) -> int:
    from tcjepa.config import load_config
    from tcjepa.data.masks import MultiBlockMaskCollator, draw_masks, format_statistics, mask_statistics

    cfg = load_config(args.config, args.overrides)
    grid = tuple(args.grid) if args.grid else (cfg.data.image_size // cfg.model.patch_size,) * 2
    collator = MultiBlockMaskCollator(cfg.mask, grid, seed=args.seed)
    stats = mask_statistics(collator, num_batches=args.batches, batch_size=args.batch_size, seed=args.seed)
    print(format_statistics(stats))
    draw_masks(collator, args.out, num_images=args.images, seed=args.seed, stats=stats)
    print(f"picture of sampled masks: {args.out}")
    return 0


def _add_text_cache(subparsers: argparse._SubParsersAction, load: bool) -> None:
    # Owned by the text side. Its import pulls in torch (seconds), so it is imported only when
    # text-cache is the command; the other commands see a placeholder with the same name.
    if not load:
        p = subparsers.add_parser("text-cache", add_help=False,
                                  help="precompute text-encoder word features for every caption "
                                       "(see `tcjepa-data text-cache --help`)")
        p.set_defaults(func=lambda args: _fail("text-cache: internal error, parser not loaded"))
        return
    from tcjepa.text import cli as text_cli

    p = text_cli.add_parser(subparsers)
    p.set_defaults(func=text_cli.run)


def _fail(message: str) -> int:
    raise DataError(message)


def build_parser(with_text_cache: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcjepa-data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run `tcjepa-data COMMAND --help` for the options of a command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("scenes", help="generate synthetic captioned scenes in every layout",
                       description="Render deterministic synthetic scenes (same seed -> same bytes) and write "
                                   "captions.jsonl + images/, an ImageNet-style tree, an ADE20k-style tree and "
                                   "COCO-style annotations under --out.")
    p.add_argument("--out", required=True, help="output folder (must be new or empty, or use --overwrite)")
    p.add_argument("--train", type=int, default=10000, help="training scenes (default: 10000)")
    p.add_argument("--val", type=int, default=1000, help="validation scenes (default: 1000)")
    p.add_argument("--captions-per-image", type=int, default=8, help="K captions per scene (default: 8)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: min(2, CPUs))")
    p.add_argument("--overwrite", action="store_true", help="replace scenes generated in --out before")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_scenes)

    p = sub.add_parser("transfer", help="generated scenes as CIFAR-100, iNat2018 and VOC 2012 trees",
                       description="Write cifar-100-python/, inat2018/ and VOCdevkit/ under --out, in the official "
                                   "layouts, for tcjepa-eval linear --dataset cifar100|inat18 and tcjepa-eval voc.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=200, help="training images per set (default: %(default)s)")
    p.add_argument("--val", type=int, default=100, help="validation images per set (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=64, help="iNat/VOC image side; CIFAR is 32 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default: %(default)s)")
    p.set_defaults(func=_cmd_transfer)

    p = sub.add_parser("to-wds", help="image folder + captions.jsonl -> WebDataset tar shards",
                       description="Pack KEY.jpg + KEY.json ({\"captions\": [...]}) samples into uncompressed tar "
                                   "shards, in captions.jsonl order (caption ids stay the same).")
    p.add_argument("--data", "--root", dest="root", required=True,
                   help="folder holding the captions file and the images (--root: the older name)")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--captions-file", default="captions.jsonl", help="captions file under --data (default: captions.jsonl)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default: 1000)")
    p.add_argument("--prefix", default="shard", help="shard file prefix (default: shard)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_to_wds)

    p = sub.add_parser("from-wds", help="WebDataset tar shards -> image folder + captions.jsonl",
                       description="Unpack shards; original image paths are restored when the JSON has them.")
    p.add_argument("--shards", required=True, nargs="+",
                   help="shard paths, brace patterns ('shard-{000000..000009}.tar'), globs or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--captions-file", default="captions.jsonl", help="captions file to write under --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_from_wds)

    p = sub.add_parser("masks", help="picture and statistics of sampled context/target masks",
                       description="Sample multi-block masks from a config, print coverage maps and size "
                                   "histograms, and draw a PNG of sampled masks.")
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. mask.num_targets=2")
    p.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"),
                   help="patch grid (default: data.image_size / model.patch_size)")
    p.add_argument("--batches", type=int, default=50, help="batches for the statistics (default: 50)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--images", type=int, default=8, help="masks drawn in the picture (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default: 0)")
    p.add_argument("--out", default="masks.png", help="PNG to write (default: masks.png)")
    p.set_defaults(func=_cmd_masks)

    _add_text_cache(sub, load=with_text_cache)
    add_captioning_parsers(sub)
    return document_defaults(parser)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(with_text_cache="text-cache" in argv)
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
    except (DataError, ConfigError) as e:
        print(f"tcjepa-data {args.command}: error: {e}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    return exit_rank(status)  # captions run under torchrun


if __name__ == "__main__":
    sys.exit(main())
