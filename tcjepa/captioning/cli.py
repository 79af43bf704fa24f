"""``tcjepa-data captions`` and ``tcjepa-data caption-stats``. Building the parsers imports
nothing heavy; torch and transformers load only when one of these commands runs."""
from __future__ import annotations

import argparse
from pathlib import Path


def _add_captions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "captions", help="caption an image collection with a local vision-language model (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Write N captions per image in the format tcjepa-train reads: --out/captions.jsonl (image "
                    "paths relative to --out) for a folder, or captioned copies of the shards for --wds. The model "
                    "is a local folder (BLIP, BLIP-2, GIT, or a chat VLM such as LLaVA with a chat template); "
                    "nothing is downloaded. Killed and rerun with the same command, it resumes; under torchrun "
                    "each rank captions its share and rank 0 merges in input order.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder of images (any depth; .jpg .jpeg .png .webp)")
    src.add_argument("--imagenet", type=Path, help="ImageNet-style root: ROOT/SPLIT/<class>/<image>")
    src.add_argument("--wds", nargs="+", help="WebDataset shards: paths, brace patterns, globs or folders")
    p.add_argument("--split", default="train", help="split folder under --imagenet")
    p.add_argument("--model", required=True, type=Path, help="captioning model folder (save_pretrained layout)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--per-image", type=int, default=8, help="N: captions per image")
    p.add_argument("--prompts", type=Path, default=None,
                   help="prompts YAML (default: tcjepa/captioning/prompts.yaml)")
    p.add_argument("--decoding", default="mixed", choices=("mixed", "sample", "greedy"),
                   help="mixed: first caption of each prompt greedy, repeats sampled; sample: all sampled; "
                        "greedy: one caption per prompt")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass")
    p.add_argument("--refill-rounds", type=int, default=2,
                   help="extra sampled rounds for images short of N after duplicates and near-empty captions")
    p.add_argument("--max-words", type=int, default=64,
                   help="captions are cut to this many words (match text.max_words of the text cache)")
    p.add_argument("--min-words", type=int, default=2, help="captions with fewer words are dropped as near-empty")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length limit (default: 1.5 x --max-words)")
    p.add_argument("--batch-size", type=int, default=16, help="images per generate call")
    p.add_argument("--chunk-size", type=int, default=512, help="images per atomically written output chunk")
    p.add_argument("--workers", type=int, default=None, help="image decoding workers (default: half the cores)")
    p.add_argument("--device", default="auto", help="auto (GPU in bf16 if there is one) | cpu | cuda | cuda:N")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip and count unreadable or missing images instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="discard what --out holds and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_captions_command)


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "caption-stats", help="caption counts, lengths, vocabulary and duplicates, as markdown + PNG",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Summarise a caption set before training on it: captions per image, words per caption, "
                    "vocabulary size, most frequent words, duplicate rates (and what `captions` dropped).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="dataset folder holding the captions file")
    src.add_argument("--shards", nargs="+", help="WebDataset shards")
    p.add_argument("--captions-file", default="captions.jsonl", help="captions file under --data")
    p.add_argument("--out", type=Path, default=None, help="markdown file (default: caption_stats.md beside the data)")
    p.add_argument("--png", type=Path, default=None, help="histogram PNG (default: --out with .png)")
    p.add_argument("--top", type=int, default=20, help="most frequent words listed")
    p.set_defaults(func=run_stats_command)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    _add_captions(sub)
    _add_stats(sub)


def run_captions_command(args: argparse.Namespace) -> int:
    from .generation import GenerationOptions
    from .run import CaptionJob, run_captions

    options = GenerationOptions(per_image=args.per_image, decoding=args.decoding,
                                max_new_tokens=args.max_new_tokens or max(8, round(1.5 * args.max_words)),
                                temperature=args.temperature, top_p=args.top_p, refill_rounds=args.refill_rounds,
                                seed=args.seed)
    job = CaptionJob(out=args.out, model=args.model, options=options, images=args.images, imagenet=args.imagenet,
                     split=args.split, wds=args.wds, prompts=args.prompts, max_words=args.max_words,
                     min_words=args.min_words, batch_size=args.batch_size, chunk_size=args.chunk_size,
                     workers=args.workers, skip_bad=args.skip_bad, overwrite=args.overwrite, device=args.device,
                     progress=not args.quiet)
    meta = run_captions(job)
    if meta is not None:
        c = meta["counts"]
        print(f"captions: {meta['captions']} captions for {meta['captioned']} of {meta['images']} images -> "
              f"{args.out} ({c.get('duplicates', 0)} duplicates and {c.get('near_empty', 0)} near-empty dropped, "
              f"{c.get('truncated', 0)} cut to {args.max_words} words, {meta['skipped_bad']} bad images skipped, "
              f"{meta['without_captions']} images without a caption)")
    return 0


def run_stats_command(args: argparse.Namespace) -> int:
    from .stats import write_caption_stats

    markdown, md, png = write_caption_stats(args.data, args.out, args.png, args.captions_file, args.shards, args.top)
    print(markdown)
    print(f"caption-stats: wrote {md} and {png}")
    return 0
