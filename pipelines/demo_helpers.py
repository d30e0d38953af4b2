"""What the demo's stages (``pipelines/demo.py``) need besides the stages' own APIs and the
simulation: the raw data's size, whether WordNet is installed (it is never downloaded here), the
downloaded image shards and how many images they hold, the dedup calibration precision scaled to
the corpus, the measured step time behind ``--train-minutes``, and where the CLIP step's
data loader runs. (Writing the simulated data, rendering calibration images and tracing the
problem cases are the simulation's:
``wit_builder/sim/rawdata.py``, ``heldout.py``, ``cases.py``; only ``pipelines/demo.py`` imports
it.)
"""
from __future__ import annotations

import os
import time

from wit_builder.core import WitError

__all__ = ["folder_bytes", "query_parts", "image_shards", "downloaded_images",
           "corpus_scaled_precision", "measure_step_seconds", "loader_workers"]


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


# --- queries ------------------------------------------------------------------------------------

def query_parts(wordnet: str) -> tuple[tuple[str, ...], str | None]:
    """The query parts for ``--wordnet`` auto | on | off (WordNet only when it is installed, never
    downloaded here), and a note when it was left out."""
    parts = ("unigram", "bigram", "title")
    if wordnet == "off":
        return parts, "WordNet part off (--wordnet off)"
    from queries import wordnet as wn
    try:
        wn.wordnet_root(None, allow_download=False)
    except WitError as exc:
        if wordnet == "on":
            raise
        return parts, f"WordNet not installed, part skipped ({str(exc).split(';')[0]})"
    return ("wordnet",) + parts, None


# --- download and dedup -------------------------------------------------------------------------

def image_shards(images_dir: str) -> list[str]:
    return sorted(os.path.join(images_dir, f) for f in os.listdir(images_dir) if f.endswith(".tar"))


def downloaded_images(images_dir: str) -> int:
    """Rows with status success in ``wit download``'s ``NNNNN.parquet`` files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    n = 0
    for f in sorted(os.listdir(images_dir)):
        if f[:1].isdigit() and f.endswith(".parquet"):
            status = pq.read_table(os.path.join(images_dir, f), columns=["status"]).column("status")
            n += int(pc.sum(pc.equal(status, "success")).as_py() or 0)
    return n


def corpus_scaled_precision(target: float, calibration: int, corpus: int) -> float:
    """The calibration precision that gives about ``target`` on the whole corpus.

    Calibration scores each of ``calibration`` copies against every original: ``calibration``
    positive pairs but ~``calibration**2`` negative ones. On a corpus of ``corpus`` images the
    negatives grow as ``corpus**2`` while the duplicates grow as ``corpus``, so the false
    positives per true pair grow by ``corpus / calibration``. Measured on the 8,000-scene demo
    (6,695 images, 197 planted groups): precision 0.99 on 400 calibration images dropped 631
    images of which 333 were copies; 0.9976 on 1,600 dropped 255, 245 of them copies (158 of the
    197 groups still clustered)."""
    if corpus <= calibration:
        return target
    return 1.0 - (1.0 - target) * calibration / corpus


# --- train --------------------------------------------------------------------------------------

def measure_step_seconds(model_name: str, batch_size: int, image_size: int | None, threads: int,
                         steps: int = 3, precision: str = "fp32") -> float:
    """Seconds per training step of ``model_name`` on this machine (random data, after one
    warm-up step, in ``precision`` as the trainer resolves it), plus 15% for data loading: how
    ``--train-minutes`` turns into steps."""
    import torch

    from trainer.loss import ClipLoss
    from trainer.model import create_model
    from trainer.precision import resolve_precision
    from trainer.vision import use_channels_last
    if threads:
        torch.set_num_threads(threads)
    model, cfg = create_model(model_name, image_size=image_size, vocab_size=4096)
    use_channels_last(model.visual)  # as trainer.build: the step `wit train` will run
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = ClipLoss()
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(batch_size, 3, size, size)
    t = torch.randint(1, 4000, (batch_size, cfg["text_cfg"]["context_length"]))
    t[:, -1] = 4095
    bf16 = resolve_precision(precision, torch.device("cpu"))[0] == "bf16"
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img, txt, scale = model(x, t)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return 1.15 * sorted(times[1:])[len(times[1:]) // 2]


def loader_workers(threads: int) -> int:
    """Data-loader worker processes for the demo's CLIP training: none (the loader runs in the
    training process, between steps) when the training threads take every core this process
    may use, else one. A worker process beside threads on every core takes its CPU from them
    mid-step, and OpenMP's threads wait for each other: on 2 cores with 2 threads the demo's
    600 tiny-rn steps took 119.6 s with one worker and 108.9 s inline (the step 0.176 -> 0.137
    s, the loader's ~29 ms a batch then added between steps; Xeon AMX, bf16, the same batches
    and loss). The batches do not depend on the choice (one worker's stream is the inline one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return 0 if threads >= cores else 1
