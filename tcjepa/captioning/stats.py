"""``caption-stats``: is this caption set worth training on? Counts, lengths, vocabulary,
frequent words and duplicates, as a markdown summary and a histogram PNG."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from .cleaning import duplicate_key
from .writer import META_FILE


def read_caption_lists(data: Path | None = None, captions_file: str = "captions.jsonl",
                       shards: Sequence[str] | None = None) -> list[list[str]]:
    """The caption list of every image of a folder's captions file, or of WebDataset shards."""
    from tcjepa.data.captions import read_captions_jsonl

    if shards:
        from tcjepa.data.wds import CaptionedWebDataset

        return [list(r.captions) for r in CaptionedWebDataset(shards).records]
    return [list(r.captions) for r in read_captions_jsonl(Path(data) / captions_file)]


def caption_stats(images: list[list[str]], top: int = 20) -> dict:
    words = [len(c.split()) for caps in images for c in caps]
    vocabulary = Counter(w for caps in images for c in caps for w in duplicate_key(c).split())
    within = sum(len(caps) - len({duplicate_key(c) for c in caps}) for caps in images)
    total = len(words)
    distinct = len({duplicate_key(c) for caps in images for c in caps})
    per_image = [len(caps) for caps in images]
    return {
        "images": len(images), "captions": total,
        "per_image": {"min": min(per_image), "mean": float(np.mean(per_image)), "max": max(per_image),
                      "histogram": dict(sorted(Counter(per_image).items()))},
        "words": {"min": min(words), "mean": float(np.mean(words)), "median": float(np.median(words)),
                  "p95": float(np.percentile(words, 95)), "max": max(words)},
        "vocabulary": len(vocabulary), "top_words": vocabulary.most_common(top),
        "duplicates_within_image": within / total, "duplicates_overall": 1 - distinct / total,
        "words_per_caption": words, "captions_per_image": per_image,
    }


def stats_markdown(stats: dict, source: str, meta: dict | None = None) -> str:
    w, p = stats["words"], stats["per_image"]
    lines = [f"# Caption statistics: {source}", "",
             "| quantity | value |", "|---|---|",
             f"| images | {stats['images']} |", f"| captions | {stats['captions']} |",
             f"| captions per image (min / mean / max) | {p['min']} / {p['mean']:.2f} / {p['max']} |",
             f"| words per caption (min / median / mean / p95 / max) | {w['min']} / {w['median']:.0f} / "
             f"{w['mean']:.1f} / {w['p95']:.0f} / {w['max']} |",
             f"| vocabulary (distinct words) | {stats['vocabulary']} |",
             f"| duplicate rate within an image | {100 * stats['duplicates_within_image']:.1f} % |",
             f"| duplicate rate over all captions | {100 * stats['duplicates_overall']:.1f} % |"]
    if meta:
        c = meta.get("counts", {})
        lines += [f"| dropped when generated: duplicates / near-empty / truncated | {c.get('duplicates', 0)} / "
                  f"{c.get('near_empty', 0)} / {c.get('truncated', 0)} of {c.get('generated', 0)} |",
                  f"| images skipped as unreadable / left without a caption | {meta.get('skipped_bad', 0)} / "
                  f"{meta.get('without_captions', 0)} |"]
    lines += ["", "Captions per image: " + ", ".join(f"{k}: {v}" for k, v in p["histogram"].items()), "",
              "Most frequent words: " + ", ".join(f"{word} ({n})" for word, n in stats["top_words"]), ""]
    return "\n".join(lines)


def plot_stats(stats: dict, out_png: Path, source: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    words = stats["words_per_caption"]
    axes[0].hist(words, bins=np.arange(0.5, max(words) + 1.5, max(1, max(words) // 40)), color="tab:blue")
    axes[0].set(title="words per caption", xlabel="words", ylabel="captions")
    hist = stats["per_image"]["histogram"]
    axes[1].bar(list(hist), list(hist.values()), color="tab:orange")
    axes[1].set(title="captions per image", xlabel="captions", ylabel="images", xticks=list(hist))
    fig.suptitle(source)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_caption_stats(data: Path | None, out_md: Path | None, out_png: Path | None,
                        captions_file: str = "captions.jsonl", shards: Sequence[str] | None = None,
                        top: int = 20) -> tuple[str, Path, Path]:
    """Markdown and PNG next to the data (or at the given paths); returns (markdown, md, png)."""
    images = read_caption_lists(data, captions_file, shards)
    source = f"{data / captions_file}" if data else " ".join(shards)
    base = Path(data) if data else Path(shards[0]).parent
    meta_path = base / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    stats = caption_stats(images, top)
    markdown = stats_markdown(stats, source, meta)
    out_md = out_md or base / "caption_stats.md"
    out_png = out_png or Path(out_md).with_suffix(".png")
    Path(out_md).parent.mkdir(parents=True, exist_ok=True)
    Path(out_md).write_text(markdown)
    plot_stats(stats, Path(out_png), source)
    return markdown, Path(out_md), Path(out_png)
