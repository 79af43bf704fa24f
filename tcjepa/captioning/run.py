"""One captioning job, on one process or under torchrun: each rank captions the chunks
``c % world_size == rank`` and writes them itself; rank 0 then waits for every chunk and
merges them, in input order, into the output."""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from tcjepa.data.errors import DataError

from .cleaning import CaptionFilter
from .families import detect_family, load_captioner
from .generation import GenerationOptions, caption_batch
from .prompts import load_prompts
from .sources import Source, default_workers, folder_source, image_batches, imagenet_source, wds_source
from .writer import CaptionOutput

log = logging.getLogger("tcjepa.captioning")
FORMAT_VERSION = 1  # bump when the same settings would give other captions


@dataclass
class CaptionJob:
    out: Path
    model: Path
    options: GenerationOptions
    images: Path | None = None
    imagenet: Path | None = None
    split: str = "train"
    wds: list[str] | None = None
    prompts: Path | None = None
    max_words: int = 64
    min_words: int = 2
    batch_size: int = 16
    chunk_size: int = 512
    workers: int | None = None
    skip_bad: bool = False
    overwrite: bool = False
    device: str = "auto"
    progress: bool = True


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def open_source(job: CaptionJob) -> Source:
    given = [x is not None for x in (job.images, job.imagenet, job.wds)]
    if sum(given) != 1:
        raise DataError("give exactly one input: --images DIR, --imagenet ROOT or --wds SHARDS")
    if job.images is not None:
        return folder_source(job.images)
    if job.imagenet is not None:
        return imagenet_source(job.imagenet, job.split)
    return wds_source(job.wds)


def job_settings(job: CaptionJob, source: Source, family: str, prompts: tuple[str, ...]) -> dict:
    """What decides the captions; a resume with any of these changed is refused."""
    from tcjepa.text.encoder import encoder_fingerprint

    if job.max_words < 1 or not 1 <= job.min_words <= job.max_words:
        raise DataError(f"need 1 <= --min-words <= --max-words, got {job.min_words} and {job.max_words}")
    return {"format_version": FORMAT_VERSION, "source": source.kind, "inputs": len(source),
            "input_fingerprint": source.fingerprint(), "model": str(job.model.resolve()), "family": family,
            "model_fingerprint": encoder_fingerprint(job.model), "prompts": list(prompts),
            "max_words": job.max_words, "min_words": job.min_words, "chunk_size": job.chunk_size,
            **asdict(job.options)}


def _barrier(world: int) -> None:
    import torch.distributed as dist

    if world > 1:  # the one collective of a job: chunks are handed out by index, merged from files
        dist.init_process_group("gloo")
        dist.barrier()
        dist.destroy_process_group()


def _caption_chunks(job: CaptionJob, output: CaptionOutput, chunks: list[int], prompts: tuple[str, ...],
                    rank: int) -> None:
    captioner = load_captioner(job.model, job.device)
    batches = [list(r[i:i + job.batch_size]) for c in chunks for r in [output.chunk_range(c)]
               for i in range(0, len(r), job.batch_size)]
    todo = sum(len(b) for b in batches)
    workers = default_workers() if job.workers is None else job.workers
    bar = tqdm(total=todo, desc=f"captions{f' rank {rank}' if _rank_and_world()[1] > 1 else ''}", unit="img",
               disable=not job.progress, dynamic_ncols=True, smoothing=0.1)
    pending = {c: ([], Counter(), len(output.chunk_range(c))) for c in chunks}
    chunk_of = {i: c for c in chunks for i in output.chunk_range(c)}
    try:
        for batch in image_batches(output.source, batches, workers, captioner.decode_side()):
            chunk = chunk_of[batch[0]["index"]]
            records, counts, size = pending[chunk]
            good = [item for item in batch if item["error"] is None]
            for item in batch:
                if item["error"] is not None and not job.skip_bad:
                    raise DataError(item["error"])
            captions_filter = CaptionFilter(job.options.per_image, job.max_words, job.min_words, counts)
            captions = caption_batch(captioner, [g["image"] for g in good], prompts, job.options, captions_filter,
                                     batch[0]["index"]) if good else []
            by_index = {g["index"]: c for g, c in zip(good, captions)}
            for item in batch:
                if item["error"] is not None:
                    counts["skipped_bad"] += 1
                    bar.write(f"skipping bad image: {item['error']}")
                    records.append({"skipped": item["error"]})
                else:
                    records.append({"captions": by_index[item["index"]]})
            if len(records) == size:
                output.write_chunk(chunk, records, counts)
                del pending[chunk]
            bar.update(len(batch))
    finally:
        bar.close()


def _wait_for_chunks(output: CaptionOutput, poll_s: float = 2.0) -> None:
    """Rank 0 waits for the other ranks' chunks (torchrun stops every rank if one fails)."""
    said = False
    while len(done := output.done_chunks()) < output.num_chunks:
        if not said:
            print(f"captions: waiting for {output.num_chunks - len(done)} chunk(s) from the other ranks", flush=True)
            said = True
        time.sleep(poll_s)


def run_captions(job: CaptionJob) -> dict | None:
    """Caption (or resume captioning) the job's input; the meta of the finished output on the
    process that merged it, None on the other ranks."""
    start = time.perf_counter()
    rank, world = _rank_and_world()
    source = open_source(job)
    family, config = detect_family(job.model)
    prompts = load_prompts(job.prompts).for_family(family)
    job.options.check(len(prompts))
    if job.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {job.batch_size}")
    output = CaptionOutput(job.out, source, job_settings(job, source, family, prompts), job.chunk_size)
    complete = output.prepare(job.overwrite, is_main=True) if rank == 0 else False
    _barrier(world)  # rank 0 has checked, and with --overwrite cleared, the output
    if rank != 0:
        complete = output.prepare(False, is_main=False)
    if complete:
        print(f"captions: {job.out} is already complete with these settings; nothing to do")
        return None
    output.lock(rank)
    done = output.done_chunks()
    mine = [c for c in range(output.num_chunks) if c % world == rank and c not in done]
    if done:
        print(f"captions: resuming, {len(done)} of {output.num_chunks} chunks already written", flush=True)
    if mine:
        _caption_chunks(job, output, mine, prompts, rank)
    if rank != 0:
        return None
    _wait_for_chunks(output)
    extra = {"model_type": config.model_type, "world_size": world, "batch_size": job.batch_size,
             "device": job.device, "seconds_last_run": round(time.perf_counter() - start, 1)}
    return output.finish(extra)
