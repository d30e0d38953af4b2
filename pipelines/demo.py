"""``wit demo --out DIR``: every stage, end to end, on a generated simulated web, offline.

The run (each step calls the stage's own Python API, the code the ``wit`` subcommands run)::

    generate   simulated Wikipedia -> DIR/raw/wiki (multistream dump + index), DIR/raw/pageviews;
               simulated web -> DIR/raw/web (WARC + WAT, Common Crawl layout), DIR/raw/manifest.json;
               held-out zero-shot images -> DIR/heldout
    queries    wit queries (thresholds scaled down for the small corpus)         -> DIR/queries
    collect    wit collect on the WAT and WARC files, small per-query cap        -> DIR/collect
    download   wit download from a loopback server (started and stopped here)    -> DIR/images
    dedup      wit dedup train (tiny detector), calibrate, run                   -> DIR/dedup
    shards     wit shards with the dedup decisions                               -> DIR/shards
    tokenizer  wit tokenizer train on the shards' captions                       -> DIR/tokenizer
    baseline   a supervised baseline: the same image tower, a linear head on the shapes the
               captions name (CLIP's effective-robustness comparison)           -> DIR/baseline
    train      wit train: a small CLIP on the CPU                                -> DIR/train
    eval       zero-shot top-1 on the held-out sets (prompt ensembles): shapes and colours drawn
               like the web, and shape sets drawn by code the web never used (sketches,
               silhouettes, a second renderer); the baseline on the shape sets  -> DIR/eval
    report     DIR/report.md + DIR/report.html

Each stage prints one summary line (records in, out, dropped by reason, wall and CPU time); the
stages draw their own progress bars. A finished stage writes ``DIR/.demo/STAGE.json`` (its
parameters' fingerprint and summary); a re-run skips every stage whose marker matches, so an
interrupted demo resumes where it stopped (download per shard, training from its last checkpoint).
Once a stage runs, every later stage runs too. ``--force`` redoes everything.

**The loopback server and resuming.** The simulated web's URLs carry no port
(``http://shapes.example/images/...``): the generated WARC/WAT files, the collected pairs and their
uids are the same in every run. The server binds a free port on 127.0.0.1 when the download stage
starts, and the downloader gets a resolve table that maps each simulated ``HOST:80`` to
``127.0.0.1:PORT`` (like curl's ``--connect-to``) plus that single endpoint as the only allowed
loopback address, so the SSRF guard stays on. A resumed download simply uses the new port.

**The code.** Here: one function per stage (``stage_generate`` ... ``stage_report``), each over
the stage's own driver and config, and :func:`run_demo`, which runs them in order. Each gets a
:class:`DemoRun` (the config, the run folder, the summaries so far); it, :class:`DemoConfig`, the
markers and the summary lines are in ``pipelines/demo_run.py``; small helpers the stages use
(step timing, image counts, the WordNet probe, ...) in ``pipelines/demo_helpers.py``. This is the
one module of ``pipelines`` that imports the simulation (``wit_builder.sim``): writing the
simulated data, calibration images, the problem-case trace for the report.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from typing import Callable

from pipelines.demo_helpers import (corpus_scaled_precision, downloaded_images, folder_bytes,
                                    image_shards, loader_workers, measure_step_seconds,
                                    query_parts)
from pipelines.demo_run import (MARKERS, STAGES, DemoConfig, DemoRun, cpu_seconds, fingerprint,
                                finished_marker, run_stage, summary_line)
from wit_builder.core import WitError, atomic_write_json, read_json_or_none

__all__ = ["STAGES", "DemoConfig", "DemoRun", "run_demo", "summary_line", "evaluate_zeroshot"]


def web_config(cfg: DemoConfig):
    """The simulated web's WebConfig for this demo (the download stage rebuilds the same web)."""
    from wit_builder.sim.simweb import WebConfig
    return WebConfig(seed=cfg.seed, scenes=cfg.web_scenes(), dup_groups=cfg.dup_groups)


# --- the stages: each returns its summary {"in", "out", "dropped", "note", ...} -----------------

def stage_generate(run: DemoRun) -> dict:
    from wit_builder.sim.heldout import write_heldout
    from wit_builder.sim.rawdata import write_web, write_wiki
    from wit_builder.sim.simweb import build_web
    from wit_builder.sim.simwiki import build_wiki

    cfg = run.cfg
    wiki = build_wiki(cfg.seed)
    pv_files = write_wiki(wiki, run.path("raw"))
    web = build_web(web_config(cfg))
    segments = max(1, cfg.web_files)
    write_web(web, run.path("raw"), segments)
    held = write_heldout(run.path("heldout"), per_class=cfg.heldout_per_class, seed=cfg.seed,
                         force=True, progress=cfg.progress)
    counts = web.counts()
    nbytes = folder_bytes(run.path("raw"))
    images = sum(s["images"] for s in held["sets"].values())
    return {"in": counts["img_tags"], "out": counts["image_urls"], "dropped": {},
            "note": (f"wiki {len(wiki.articles)} pages + {len(pv_files)} pageview hours; web "
                     f"{counts['pages']} pages in {segments} WARC + {segments} WAT "
                     f"({nbytes / 1e6:.1f} MB raw); held-out {images} images"),
            "wiki_pages": len(wiki.articles), "web_pages": counts["pages"],
            "heldout_images": images}


def stage_queries(run: DemoRun) -> dict:
    from pipelines import queries
    from queries.build import BuildConfig, QueryParams
    from wit_builder.sim.simwiki import DEMO_THRESHOLDS

    parts, note = query_parts(run.cfg.wordnet)
    params = QueryParams(parts=parts, **DEMO_THRESHOLDS)
    stats = queries.run(BuildConfig(dumps=[run.path("raw", "wiki")], out=run.path("queries"),
                                    pageviews=[run.path("raw", "pageviews")], wordnet_download=False,
                                    params=params), overwrite=True)
    pages = stats.get("skipped", {}).get("pages", {})
    sizes = ", ".join(f"{p} {v['size']:,}" for p, v in stats["parts"].items() if v["enabled"])
    return {"in": stats["corpus"]["pages_read"] if "pages_read" in stats.get("corpus", {})
            else sum(pages.values()) + stats["corpus"].get("articles", 0),
            "out": stats["output"]["queries"],
            "dropped": {f"pages_{k}": v for k, v in pages.items() if isinstance(v, int)},
            "note": f"parts: {sizes}" + (f"; {note}" if note else "")}


def stage_collect(run: DemoRun) -> dict:
    from pipelines import collect
    from wit_builder.collect import make_config
    web = run.path("raw", "web")
    cfg = make_config(run.path("queries", "queries.parquet"), [f"{web}/*.warc.wat.gz", f"{web}/*.warc.gz"],
                      run.path("collect"), per_query_cap=run.cap(), seed=run.cfg.seed, langs=("en",),
                      num_shards=max(1, run.cfg.web_files))
    stats = collect.run(cfg, overwrite=True)
    dropped = {k: v for k, v in stats["dropped"].items() if v}
    dropped["balancing"] = stats["matched"] - stats["kept"]
    return {"in": stats["pairs_extracted"], "out": stats["kept"], "dropped": dropped,
            "note": (f"{stats['matched']:,} matched, cap {stats['per_query_cap']}, "
                     f"{stats['head_queries']} head queries"),
            "matched": stats["matched"], "per_query_cap": stats["per_query_cap"]}


def stage_download(run: DemoRun) -> dict:
    from pipelines import download
    from wit_builder.download import DownloadConfig, DownloadOptions
    from wit_builder.sim.loopback import LoopbackServer
    from wit_builder.sim.simweb import build_web

    cfg = run.cfg
    web = build_web(web_config(cfg))
    # the server's threads share one interpreter: render the wanted images ahead, one process
    # per core, and serve them from memory (the stage 79 s -> 65 s, docs/demo.md)
    import pyarrow.parquet as pq
    urls = pq.read_table(run.path("collect", "balanced"), columns=["url"]).column("url").to_pylist()
    web.prerender(urls, processes=cfg.threads, progress=cfg.progress)
    with LoopbackServer(web.routes()) as server:  # 127.0.0.1, a free port
        port = server.port
        opts = DownloadOptions(
            image_size=cfg.image_size, processes=cfg.download_processes,
            threads=cfg.download_threads, timeout=10, samples_per_shard=cfg.download_shard_size,
            resolve=web.connect_to(server.port), allowed_endpoints=[f"127.0.0.1:{server.port}"])
        s = download.run(DownloadConfig(run.path("collect", "balanced"), run.path("images"), opts),
                         progress=cfg.progress)
    if s.get("incomplete_shards"):
        raise WitError(f"download: shards {', '.join(s['incomplete_shards'])} are incomplete "
                       f"(see {run.path('images', '_wit', 'img2dataset.log')}); re-run to retry")
    return {"in": s["samples"], "out": s["success"], "dropped": dict(s["by_error_kind"]),
            "note": f"{s['shards']} shards, SSRF guard on (only 127.0.0.1:{port} allowed)"}


def stage_dedup(run: DemoRun) -> dict:
    from pipelines import dedup
    from wit_builder.dedup import DedupConfig
    from wit_builder.detector_train import (CalibrationConfig, DetectorTrainConfig, calibrate_detector,
                                            train_detector)
    from wit_builder.sim.heldout import calibration_images

    cfg, shards = run.cfg, image_shards(run.path("images"))
    det = run.path("dedup", "detector.pt")
    os.makedirs(run.path("dedup"), exist_ok=True)
    train_detector(shards, det, DetectorTrainConfig(
        steps=cfg.detector_steps, batch_size=cfg.detector_batch, arch="tiny",
        image_size=cfg.detector_image_size, seed=cfg.seed,
        checkpoint_every=max(50, cfg.detector_steps // 3)), threads=cfg.threads, progress=cfg.progress)
    # Calibrated on freshly rendered, distinct scenes, not on a held-out split of the web's
    # images: those contain the planted near-duplicates, which calibration would count as
    # false positives (pushing the threshold to ~1.0, so that nothing is deduplicated).
    images = calibration_images(cfg.calibration_images, cfg.seed, cfg.image_size)
    target = corpus_scaled_precision(0.99, len(images), downloaded_images(run.path("images")))
    cal = calibrate_detector(det, None, CalibrationConfig(target_precision=target, max_images=len(images),
                                                          use_all=True, seed=cfg.seed),
                             images=images, threads=cfg.threads, progress=cfg.progress)
    stats = dedup.run(DedupConfig(tuple(shards), det, run.path("dedup"), threads=cfg.threads))
    dropped = {"near_duplicate": stats["dropped_duplicates"]}
    dropped.update({f"undecodable_{k}": v for k, v in stats["skipped"].items()})
    return {"in": stats["images"], "out": stats["kept"], "dropped": dropped,
            "note": (f"{stats['duplicate_clusters']} duplicate clusters, threshold "
                     f"{stats['threshold']:.3f} (precision {cal['target_precision']:.4f} on "
                     f"{cal['images']} rendered calibration images, i.e. ~0.99 at this "
                     f"corpus's size)")}


def stage_shards(run: DemoRun) -> dict:
    from pipelines import shards
    from wit_builder.shards import ShardsConfig
    m = shards.run(ShardsConfig(run.path("images"), run.path("shards"), dedup=run.path("dedup"),
                                samples_per_shard=run.cfg.samples_per_shard))
    t = m["totals"]
    dropped = {"failed_download": t["download_failed"], "dedup": t["dropped_by_dedup"],
               "missing_in_tar": t["missing_in_tar"]}
    return {"in": t["download_rows"], "out": t["samples"], "dropped": dropped,
            "note": f"{len(m['shards'])} shards, train data {os.path.relpath(m['train_data'], run.dir)}",
            "train_data": m["train_data"]}


def stage_tokenizer(run: DemoRun) -> dict:
    from trainer.captions import iter_captions
    from trainer.tokenizer import Tokenizer, train_merges

    captions = list(iter_captions(run.train_data()))
    out = train_merges(captions, run.cfg.num_merges, run.path("tokenizer", "merges.txt"))
    tok = Tokenizer.from_merges(out)
    return {"in": len(captions), "out": len(tok.merges), "dropped": {},
            "note": f"merges learned (asked {run.cfg.num_merges}), vocabulary {tok.vocab_size}"}


def stage_train(run: DemoRun) -> dict:
    from trainer.train import TrainConfig, train
    cfg, held = run.cfg, run.path("heldout")
    steps = cfg.clip_steps()
    if cfg.train_minutes:
        seconds = measure_step_seconds(cfg.model, cfg.batch_size, cfg.train_image_size, cfg.threads,
                                       precision=cfg.precision)
        steps = max(10, int(cfg.train_minutes * 60 / seconds))
    s = train(TrainConfig(
        train_data=run.train_data(), out=run.path("train"), model=cfg.model,
        tokenizer=run.path("tokenizer", "merges.txt"), batch_size=cfg.batch_size,
        epochs=10_000, max_steps=steps, lr=cfg.lr, wd=cfg.wd, warmup=min(cfg.warmup, steps),
        image_size=cfg.train_image_size, context_length=cfg.context_length,
        workers=loader_workers(cfg.threads),
        threads=cfg.threads, seed=cfg.seed, resume="latest", save_every=max(50, steps // 4),
        precision=cfg.precision,
        log_every=10, eval_every=cfg.eval_every, zeroshot_dir=os.path.join(held, "shapes"),
        zeroshot_classes=os.path.join(held, "shapes_classes.txt"),
        zeroshot_templates=os.path.join(held, "shapes_templates.txt"),
        progress=cfg.progress))
    seen = s["step"] * s["global_batch_size"]
    return {"in": s["num_samples"], "out": s["step"], "dropped": dict(s.get("skipped") or {}),
            "note": (f"steps of {s['global_batch_size']} pairs ({seen / max(1, s['num_samples']):.1f} "
                     f"epochs), final loss {s['final_loss']:.3f}, {s['samples_per_s']:.0f} pairs/s, "
                     f"{s['precision']}"),
            "final_loss": s["final_loss"]}


def stage_baseline(run: DemoRun) -> dict:
    from trainer.supervised import SupervisedConfig, train_supervised
    from wit_builder.sim.render import SHAPES

    cfg = run.cfg
    steps = cfg.supervised_steps()
    if steps <= 0:
        return {"in": 0, "out": 0, "dropped": {}, "note": "skipped (--baseline-steps 0)"}
    s = train_supervised(SupervisedConfig(
        train_data=run.train_data(), out=run.path("baseline"), classes=tuple(SHAPES), model=cfg.model,
        image_size=cfg.train_image_size, batch_size=cfg.baseline_batch, steps=steps,
        lr=cfg.baseline_lr, wd=cfg.wd, warmup=min(30, steps), threads=cfg.threads,
        seed=cfg.seed, progress=cfg.progress))
    return {"in": s["samples_read"], "out": s["steps"], "dropped": dict(s["skipped"]),
            "note": (f"{cfg.model} image tower + linear head on {s['labelled']:,} images labelled by "
                     f"the shape their caption names, {s['steps']} steps of {cfg.baseline_batch}, "
                     f"final loss {s['final_loss']:.3f}, {s['samples_per_s']:.0f} images/s")}


def stage_eval(run: DemoRun) -> dict:
    baseline = run.path("baseline", "supervised.pt")
    results = evaluate_zeroshot(run.path("train", "checkpoints", "latest.pt"), run.path("heldout"),
                                run.path("eval"), baseline=baseline if os.path.exists(baseline) else None)
    rob = read_json_or_none(run.path("eval", "robustness.json")) or {}
    clip = rob.get("models", {}).get("CLIP zero-shot", {})
    sup = rob.get("models", {}).get("supervised", {})
    parts = [f"{name} top-1 {100 * r['top1']:.1f}%" for name, r in results.items()
             if r.get("kind") != "shifted"]
    if clip.get("shifted_mean") is not None:
        each = ", ".join(f"{k.removeprefix('shapes_')} {100 * v:.1f}%" for k, v in clip["shifted"].items())
        parts.append(f"shifted shapes {100 * clip['shifted_mean']:.1f}% ({each})")
    if sup.get("shifted_mean") is not None:
        parts.append(f"supervised baseline shapes {100 * sup['in_distribution']:.1f}% -> shifted "
                     f"{100 * sup['shifted_mean']:.1f}%")
    return {"in": sum(r["num_images"] for r in results.values()),
            "out": sum(int(round(r["top1"] * r["num_images"])) for r in results.values()),
            "dropped": {}, "note": "chance 12.5%; " + ", ".join(parts),
            "top1": {name: r["top1"] for name, r in results.items()},
            "shifted_mean": clip.get("shifted_mean"),
            "baseline_shifted_mean": sup.get("shifted_mean")}


def stage_report(run: DemoRun) -> dict:
    from wit_builder.sim.cases import problem_cases_section
    from wit_builder.sim.report import build_report
    from wit_builder.sim.robustness import robustness_section
    stages = {"queries": run.path("queries"), "collect": run.path("collect"),
              "download": run.path("images"), "dedup": run.path("dedup"),
              "shards": run.path("shards"), "train": run.path("train"), "eval": run.path("eval")}
    md, html_path = build_report(run.dir, stages=stages, summary=dict(run.summary), cap=run.cap(),
                                 extra_sections=[robustness_section(run.path("eval")),
                                                 problem_cases_section(run.dir)])
    figures = len(os.listdir(run.path("report_files")))
    return {"in": len(stages), "out": figures, "dropped": {},
            "note": f"{os.path.relpath(md, run.dir)}, {os.path.relpath(html_path, run.dir)} "
                    f"({figures} figures)"}


STAGE_FUNCTIONS: dict[str, Callable[[DemoRun], dict]] = {
    "generate": stage_generate, "queries": stage_queries, "collect": stage_collect,
    "download": stage_download, "dedup": stage_dedup, "shards": stage_shards,
    "tokenizer": stage_tokenizer, "train": stage_train, "baseline": stage_baseline,
    "eval": stage_eval, "report": stage_report}


# --- zero-shot evaluation with confusion matrices -----------------------------------------------

def evaluate_zeroshot(checkpoint: str, heldout: str, out: str, batch_size: int = 100,
                      baseline: str | None = None) -> dict:
    """Zero-shot top-1 on each held-out class set of ``heldout/heldout.json`` by the trainer's
    evaluator (``wit eval``'s code: prompt-ensembled classifier, eval transform), plus the
    confusion matrix of the same classifier's predictions; with ``baseline`` (a supervised
    checkpoint) also that model's top-1 on every set of its classes. Writes ``out/metrics.json``
    (``wit eval``'s metrics per set), ``out/zeroshot.json`` (what the report reads) and
    ``out/robustness.json`` (in-distribution vs shifted top-1 per model); returns zeroshot.json's
    content."""
    from trainer import evaluate as ev
    from trainer.api import load
    from trainer.evaluate import evaluate_checkpoint
    from wit_builder.sim.robustness import robustness_summary

    bundle = load(checkpoint, device="cpu")
    sets = (read_json_or_none(os.path.join(heldout, "heldout.json")) or {}).get("sets", {})
    if not sets:
        raise WitError(f"{os.path.join(heldout, 'heldout.json')} lists no held-out sets; re-run with --force")
    metrics, results = {}, {}
    for name, info in sets.items():
        folder = os.path.join(heldout, name)
        classes_file, templates_file = (os.path.join(heldout, f"{name}_{x}.txt") for x in ("classes", "templates"))
        request = ev.EvalRequest(zeroshot_dir=folder, classes=classes_file,
                                 templates=templates_file, batch_size=batch_size)
        metrics[name] = evaluate_checkpoint(checkpoint, request, model_bundle=bundle)["zeroshot"]
        results[name] = zeroshot_result(bundle, request, metrics[name], info)
        results[name]["kind"] = info.get("kind", "in_distribution")
    models = {"CLIP zero-shot": {name: r["top1"] for name, r in results.items()}}
    if baseline:
        from trainer.supervised import evaluate_supervised, load_supervised
        sup = load_supervised(baseline)
        models["supervised"] = {name: evaluate_supervised(sup, os.path.join(heldout, name), batch_size)["top1"]
                                for name, info in sets.items() if info.get("class_names") == list(sup[2])}
    shifted = [name for name, info in sets.items() if info.get("kind") == "shifted"]
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "metrics.json"), {"checkpoint": checkpoint, **metrics})
    atomic_write_json(os.path.join(out, "zeroshot.json"), results)
    in_dist = next((n for n, info in sets.items()
                    if info.get("kind", "in_distribution") == "in_distribution"
                    and shifted and info.get("class_names") == sets[shifted[0]].get("class_names")), None)
    if in_dist is not None:
        atomic_write_json(os.path.join(out, "robustness.json"),
                          robustness_summary(models, in_dist, shifted, results[in_dist]["chance"]))
    return results


def zeroshot_result(bundle, request, metrics: dict, heldout_set: dict | None) -> dict:
    """``zeroshot.json``'s entry for one held-out class set: the trainer's zero-shot figures
    (``metrics``, from ``evaluate_checkpoint`` on ``request``: top-1, top-5, images, skipped), the
    classes, the chance level, and the confusion matrix of the same prompt-ensembled classifier's
    predictions (the one thing the trainer's evaluator does not report)."""
    from trainer import evaluate as ev
    from trainer.zeroshot import ZeroShotClassifier, read_lines
    from wit_builder.sim.report import confusion_matrix

    model, preprocess, tokenizer = bundle
    classes = read_lines(request.classes, "classes")
    clf = ZeroShotClassifier(model, tokenizer, classes, read_lines(request.templates, "templates"))
    labels, preds = [], []
    items = ev.labelled_source(request.zeroshot_dir, preprocess, Counter(), classes)
    for images, y in ev.batched(items, request.batch_size):
        preds += clf.logits(images).argmax(dim=1).tolist()
        labels += [int(label) for label in y]
    m = confusion_matrix(labels, preds, len(classes))
    return {"classes": classes, "confusion": m.tolist(), "top1": metrics["top1"],
            "top5": metrics.get("top5"), "num_images": metrics["num_images"],
            "chance": float((heldout_set or {}).get("chance_top1", 1 / len(classes))),
            "skipped": metrics["skipped"]}


# --- the driver ---------------------------------------------------------------------------------

def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo; returns ``DIR/demo.json``'s content."""
    # Beam warns at import about optional GCP clients; the stages' own output is what matters
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return _run_demo(cfg, log)
    finally:
        root.setLevel(level)  # the caller's logging as it was


def _run_demo(cfg: DemoConfig, log: Callable[[str], None]) -> dict:
    run = DemoRun(cfg)
    os.makedirs(run.path(MARKERS), exist_ok=True)
    started, cpu0 = time.time(), cpu_seconds()
    upstream, redo = "", cfg.force
    for i, stage in enumerate(STAGES, 1):
        upstream = key = fingerprint(cfg.stage_params(stage), upstream)
        done = None if redo else finished_marker(run, stage, key)
        if done is not None:
            run.summary[stage] = {**done["summary"], "skipped": True}
        else:
            redo = True  # every later stage runs too
            run.summary[stage] = run_stage(run, stage, key, STAGE_FUNCTIONS[stage])
        log(summary_line(i, stage, run.summary[stage]))
    total = {"seconds": round(time.time() - started, 1), "cpu_seconds": round(cpu_seconds() - cpu0, 1)}
    z = read_json_or_none(run.path("eval", "zeroshot.json")) or {}
    state = {"config": dataclasses.asdict(cfg), "resolved": cfg.resolved(), "stages": run.summary,
             "total": total,
             "zeroshot": {name: {"top1": r.get("top1"), "chance": r.get("chance"), "kind": r.get("kind")}
                          for name, r in z.items()},
             "robustness": read_json_or_none(run.path("eval", "robustness.json"))}
    atomic_write_json(run.path("demo.json"), state)
    return state
