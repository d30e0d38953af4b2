"""Benchmark of the learned near-duplicate detector (docs/dedup.md has the measured figures).

1. Quality: a copy-detection set built from generated images the detector never trained on
   (different seeds): reference originals plus reference distractors, and queries = transformed
   copies of originals, one set per transform family (crop 5-30% of the area, rotation up to
   10 degrees, resize with each of the 5 interpolations, JPEG quality 10-90, HSV colour jitter,
   padding/borders, aspect distortion), plus query distractors that have no original. For each
   method (learned detector, pHash from imagehash, a raw-pixel baseline) we report micro average
   precision (muAP, as in the ISC2021 copy-detection challenge: the top-k predictions of all
   queries pooled, ranked by score, AP over the number of queries that have a true match) and
   recall at precision 0.99, overall and per family (each family: its copies + all query
   distractors).
2. Speed: embedding images/s on one core (decode + resize + model) for the trained detector and for
   an untrained one of the paper's ResNet-50 shape, against pHash on the same images.
3. faiss: build and search time over 1M random 256-d vectors (exact IndexFlatIP, and the IVF index
   `wit dedup run` switches to at scale), with the IVF's recall of planted near-duplicates.

Run:  python bench/dedup.py              (trains a tiny detector: about 10 minutes on 2 cores)
      python bench/dedup.py --quick      (a smoke run in about half a minute)
      python bench/dedup.py --parts faiss   (or quality / speed / any comma-separated subset)
It prints Markdown tables ready to paste into docs/dedup.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from wit_builder.augment import INTERPOLATIONS, apply_family, synthetic_image  # noqa: E402
from wit_builder.sim.fixtures import write_shard  # noqa: E402

FAMILIES = ["crop", "rotate"] + [f"resize_{i}" for i in INTERPOLATIONS] + ["jpeg", "color", "pad", "aspect"]


def make_copy(img: Image.Image, family: str, rng: np.random.Generator) -> Image.Image:
    if family.startswith("resize_"):
        return apply_family(img, "resize", rng, interpolation=family.split("_", 1)[1])
    return apply_family(img, family, rng)


def jpeg_roundtrip(img: Image.Image, quality: int = 90) -> Image.Image:
    """Every benchmark image is stored as JPEG like a downloaded one."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out.convert("RGB")


def build_set(n_refs: int, n_ref_distractors: int, copies_per_family: int, n_query_distractors: int, seed: int):
    rng = np.random.default_rng(seed)
    refs = [jpeg_roundtrip(synthetic_image(rng)) for _ in range(n_refs + n_ref_distractors)]
    queries, truth, family = [], [], []
    for fam in FAMILIES:
        for r in rng.choice(n_refs, size=copies_per_family, replace=False):
            queries.append(jpeg_roundtrip(make_copy(refs[int(r)], fam, rng)))
            truth.append(int(r))
            family.append(fam)
    for _ in range(n_query_distractors):
        queries.append(jpeg_roundtrip(synthetic_image(rng)))
        truth.append(-1)
        family.append("distractor")
    return refs, queries, np.array(truth), np.array(family)


# --- metrics ------------------------------------------------------------------------------------

def micro_ap(sims: np.ndarray, truth: np.ndarray, k: int = 10) -> tuple[float, float]:
    """ISC2021-style muAP and recall at precision >= 0.99 from a (queries x refs) score matrix.
    Each query contributes its top-k references as predictions; all predictions are ranked by
    score; a prediction is correct iff it is the query's true reference; AP is normalised by the
    number of queries that have a true reference."""
    k = min(k, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    scores = np.take_along_axis(sims, top, axis=1).ravel()
    correct = (top == truth[:, None]).ravel()
    n_gt = int((truth >= 0).sum())
    order = np.argsort(-scores, kind="stable")
    c = correct[order]
    tp = np.cumsum(c)
    precision = tp / np.arange(1, len(c) + 1)
    recall = tp / max(1, n_gt)
    ap = float(np.sum(precision[c]) / max(1, n_gt))
    at99 = recall[precision >= 0.99]
    return ap, float(at99.max()) if len(at99) else 0.0


def evaluate(sims: np.ndarray, truth: np.ndarray, family: np.ndarray) -> dict:
    out = {"all": micro_ap(sims, truth)}
    distract = family == "distractor"
    for fam in FAMILIES:
        rows = (family == fam) | distract
        out[fam] = micro_ap(sims[rows], truth[rows])
    resize = np.char.startswith(family.astype(str), "resize_") | distract
    out["resize_all"] = micro_ap(sims[resize], truth[resize])
    return out


# --- methods ------------------------------------------------------------------------------------

def phash_bits(imgs) -> np.ndarray:
    import imagehash
    return np.stack([imagehash.phash(im).hash.ravel() for im in imgs]).astype(np.float32)


def phash_sims(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    # 1 - normalised Hamming distance, via dot products of +-1 vectors
    qs, rs = 2 * q - 1, 2 * r - 1
    return (qs @ rs.T / q.shape[1] + 1) / 2


def pixel_vectors(imgs, side: int = 16) -> np.ndarray:
    v = np.stack([np.asarray(im.resize((side, side), Image.Resampling.BILINEAR), np.float32).ravel()
                  for im in imgs])
    v -= v.mean(axis=1, keepdims=True)
    return v / np.maximum(1e-6, np.linalg.norm(v, axis=1, keepdims=True))


# --- main ---------------------------------------------------------------------------------------

def train_and_calibrate(args, results: dict, tmp: str) -> str:
    """The detector, trained on generated images written as img2dataset-style shards (seed 1), then
    calibrated on other generated images (seeds 10000+)."""
    from wit_builder.detector_train import CalibrationConfig, DetectorTrainConfig, calibrate_detector, train_detector

    det = args.keep or os.path.join(tmp, "detector.pt")
    rng = np.random.default_rng(1)
    per = 500
    t0 = time.time()
    for s in range(0, args.train_images, per):
        items = [{"key": f"{s // per:05d}{i:04d}", "image": synthetic_image(rng)}
                 for i in range(min(per, args.train_images - s))]
        write_shard(os.path.join(tmp, f"{s // per:05d}.tar"), items)
    shards = sorted(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".tar"))
    print(f"generated {args.train_images} training images in {time.time() - t0:.0f} s", flush=True)
    t0 = time.time()
    res = train_detector(shards, det, DetectorTrainConfig(steps=args.steps, batch_size=args.batch_size,
                                                          arch=args.arch, image_size=args.image_size),
                         threads=args.threads, restart=True, progress=sys.stderr.isatty(), device="cpu")
    results["train"] = {"seconds": round(time.time() - t0, 1), "steps": args.steps,
                        "batch_size": args.batch_size, "arch": args.arch, "images": res["images"],
                        "final_loss": float(np.mean(res["loss_history"][-20:]))}
    print(f"trained {args.arch} detector: {args.steps} steps x {args.batch_size} in "
          f"{results['train']['seconds']} s, final loss {results['train']['final_loss']:.3f}", flush=True)
    cal_imgs = [synthetic_image(np.random.default_rng(10_000 + i)) for i in range(60 if args.quick else 300)]
    cal = calibrate_detector(det, None, CalibrationConfig(use_all=True), images=cal_imgs, threads=args.threads,
                             progress=False, device="cpu")
    results["calibration"] = {k: cal[k] for k in ("threshold", "precision", "recall", "images")}
    print(f"calibrated threshold {cal['threshold']:.4f} (precision {cal['precision']:.3f}, "
          f"recall {cal['recall']:.3f} on {cal['images']} held-out images)", flush=True)
    return det


def bench_quality(args, results: dict, det: str) -> None:
    """muAP and recall at precision 0.99 on the copy-detection set (seed 2: images never seen in
    training or calibration), learned vs pHash vs raw pixels."""
    from wit_builder.detector import Embedder

    refs, queries, truth, family = build_set(args.refs, args.ref_distractors, args.copies,
                                             args.query_distractors, seed=2)
    print(f"copy-detection set: {len(refs)} references ({args.refs} originals + {args.ref_distractors} "
          f"distractors), {len(queries)} queries ({args.copies} per family x {len(FAMILIES)} families + "
          f"{args.query_distractors} distractors)", flush=True)
    emb = Embedder(det, threads=args.threads, device="cpu")
    er, eq = emb.embed_images(refs), emb.embed_images(queries)
    pr, pq_ = phash_bits(refs), phash_bits(queries)
    xr, xq = pixel_vectors(refs), pixel_vectors(queries)
    methods = {"learned": eq @ er.T, "phash": phash_sims(pq_, pr), "pixels": xq @ xr.T}
    quality = {m: evaluate(s, truth, family) for m, s in methods.items()}
    results["quality"] = quality
    rows = ["all"] + FAMILIES + ["resize_all"]
    names = {"learned": "learned", "phash": "pHash", "pixels": "pixels"}
    print("\n| family | " + " | ".join(f"{names[m]} muAP | {names[m]} R@P.99" for m in methods) + " |")
    print("|---|" + "---:|" * (2 * len(methods)))
    for r in rows:
        print(f"| {r} | " + " | ".join(f"{quality[m][r][0]:.3f} | {quality[m][r][1]:.3f}" for m in methods) + " |")
    ratio_ph = quality["learned"]["all"][0] / max(1e-9, quality["phash"]["all"][0])
    ratio_px = quality["learned"]["all"][0] / max(1e-9, quality["pixels"]["all"][0])
    results["muap_ratio"] = {"learned_over_phash": ratio_ph, "learned_over_pixels": ratio_px}
    beats = [r for r in ("all", "crop", "rotate") if quality["learned"][r][0] > quality["phash"][r][0]]
    print(f"\nmuAP ratio learned/pHash {ratio_ph:.2f}x, learned/pixels {ratio_px:.2f}x; learned beats pHash "
          f"on: {', '.join(beats) or 'none'} (of all, crop, rotate)", flush=True)


def bench_speed(args, results: dict, det: str) -> None:
    """Images/s on one core, JPEG bytes -> embedding (decode with DCT scaling, resize, model), for the
    trained detector and an untrained one of the paper's ResNet-50 shape, vs pHash on the same bytes."""
    import imagehash

    from wit_builder.imageshards import decode_image
    from wit_builder.detector import (FORMAT, VERSION, Embedder, build_model, make_config,
                                      save_detector, to_array)

    rng = np.random.default_rng(4)
    n = 64 if args.quick else 256
    blobs = []
    for _ in range(n):
        buf = io.BytesIO()
        synthetic_image(rng, (320, 240)).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    rn50 = os.path.join(os.path.dirname(det), "resnet50-untrained.pt")
    cfg = make_config("resnet50")
    save_detector(rn50, {"format": FORMAT, "version": VERSION, "config": cfg,
                         "model": build_model(cfg).state_dict()})
    torch.set_num_threads(1)  # per core
    rows = []
    for name, path, count in (("learned (" + args.arch + ")", det, n), ("resnet50 (paper's shape)", rn50, n // 8)):
        emb = Embedder(path, device="cpu")
        t0 = time.time()
        arrays = [to_array(decode_image(b, emb.image_size)[0], emb.image_size) for b in blobs[:count]]
        for i in range(0, len(arrays), 32):
            emb.embed_arrays(arrays[i:i + 32])
        rows.append((name, emb.image_size, count / (time.time() - t0)))
    torch.set_num_threads(args.threads)
    t0 = time.time()
    for b in blobs:
        imagehash.phash(Image.open(io.BytesIO(b)))
    rows.append(("pHash", None, n / (time.time() - t0)))
    results["throughput"] = {name: {"input": size, "images_per_s_per_core": v} for name, size, v in rows}
    print(f"\nthroughput on 1 core, 320x240 JPEGs -> embedding/hash:\n\n| method | input | images/s/core |\n|---|---:|---:|")
    for name, size, v in rows:
        print(f"| {name} | {f'{size} px' if size else '-'} | {v:.1f} |")


def bench_faiss(args, results: dict) -> None:
    """Index build and k=10 search time over N random unit 256-d vectors: exact and IVF (as
    `wit dedup run` builds them), with the IVF's recall of the planted near-duplicate."""
    from wit_builder.dedup import build_index, search

    rng = np.random.default_rng(3)
    x = rng.standard_normal((args.faiss_n, 256), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # queries: near-duplicates of random database vectors (cosine ~0.9 to their source)
    src = rng.choice(args.faiss_n, args.faiss_queries, replace=False)
    q = x[src] + 0.03 * rng.standard_normal((args.faiss_queries, 256), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t0 = time.time()
    flat, _ = build_index(x, exact_below=args.faiss_n + 1)
    t_add = time.time() - t0
    t0 = time.time()
    _, ids_flat = search(flat, q, 10)
    t_flat = time.time() - t0
    del flat
    t0 = time.time()
    ivf, info = build_index(x, exact_below=1, nprobe=32)
    t_ivf_build = time.time() - t0
    t0 = time.time()
    _, ids_ivf = search(ivf, q, 10)
    t_ivf = time.time() - t0
    recall1 = float((ids_ivf[:, 0] == src).mean())
    recall1_flat = float((ids_flat[:, 0] == src).mean())
    results["faiss"] = {"n": args.faiss_n, "queries": args.faiss_queries, "threads": args.threads,
                        "flat_add_s": t_add, "flat_search_s": t_flat, "ivf": info, "ivf_build_s": t_ivf_build,
                        "ivf_search_s": t_ivf, "ivf_recall_at_1": recall1, "flat_recall_at_1": recall1_flat}
    nq = args.faiss_queries
    print(f"\nfaiss, {args.faiss_n:,} random unit 256-d vectors, {nq} queries, k=10, {args.threads} thread(s):\n\n"
          "| index | build s | search s | ms/query | recall@1 |\n|---|---:|---:|---:|---:|\n"
          f"| IndexFlatIP (exact) | {t_add:.1f} | {t_flat:.2f} | {t_flat / nq * 1e3:.2f} | {recall1_flat:.3f} |\n"
          f"| IndexIVFFlat nlist={info['nlist']} nprobe={info['nprobe']} | {t_ivf_build:.1f} | {t_ivf:.2f} | "
          f"{t_ivf / nq * 1e3:.2f} | {recall1:.3f} |\n\nIVF search {t_flat / max(1e-9, t_ivf):.1f}x faster than "
          f"exact (IVF trained on {info['train_sample']:,} vectors)", flush=True)


PARTS = ("quality", "speed", "faiss")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--train-images", type=int, default=2000, help="generated training images (written as shards)")
    ap.add_argument("--steps", type=int, default=600, help="detector training steps")
    ap.add_argument("--batch-size", type=int, default=32, help="pairs per training step")
    ap.add_argument("--arch", default="tiny", help="detector preset (tiny trains on a CPU in minutes)")
    ap.add_argument("--image-size", type=int, default=None, help="detector input side (default: the preset's)")
    ap.add_argument("--refs", type=int, default=300, help="reference originals (copies are made of these)")
    ap.add_argument("--ref-distractors", type=int, default=300, help="references with no copy among the queries")
    ap.add_argument("--copies", type=int, default=60, help="queries per family")
    ap.add_argument("--query-distractors", type=int, default=300, help="queries with no original")
    ap.add_argument("--faiss-n", type=int, default=1_000_000, help="random 256-d vectors in the faiss timing")
    ap.add_argument("--faiss-queries", type=int, default=1000, help="queries in the faiss timing")
    ap.add_argument("--threads", type=int, default=1, help="torch/faiss threads for training and search "
                    "(embedding throughput is always measured on 1 thread)")
    ap.add_argument("--detector", default=None, help="reuse this trained detector instead of training one")
    ap.add_argument("--keep", default=None, help="write the trained detector here")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts: choose from {', '.join(PARTS)}")
    if args.quick:
        args.train_images, args.steps, args.batch_size = 200, 20, 16
        args.refs, args.ref_distractors, args.copies, args.query_distractors = 40, 40, 8, 40
        args.faiss_n, args.faiss_queries = 50_000, 100
    torch.set_num_threads(args.threads)
    import faiss
    faiss.omp_set_num_threads(args.threads)

    results: dict = {"args": vars(args), "command": " ".join(["python", *sys.argv])}
    t_start = time.time()
    print("command: " + results["command"], flush=True)
    tmp = tempfile.mkdtemp(prefix="wit-bench-dedup-")
    try:
        if "quality" in parts or "speed" in parts:
            det = args.detector or train_and_calibrate(args, results, tmp)
            if "quality" in parts:
                bench_quality(args, results, det)
            if "speed" in parts:
                bench_speed(args, results, det)
        if "faiss" in parts:
            bench_faiss(args, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["wall_s"] = round(time.time() - t_start, 1)
    print(f"\ntotal wall time {results['wall_s']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
