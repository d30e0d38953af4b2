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
    train      wit train: a small CLIP on the CPU                                -> DIR/train
    eval       zero-shot top-1 on the held-out shapes and colours (prompt ensembles) -> DIR/eval
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
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from wit_builder.core import WitError, atomic_write_json, read_json_or_none

STAGES = ("generate", "queries", "collect", "download", "dedup", "shards", "tokenizer", "train",
          "eval", "report")
# each stage's output (relative to DIR); removed before the stage is redone from scratch
OUTPUTS = {"generate": ("raw", "heldout"), "queries": ("queries",), "collect": ("collect",),
           "download": ("images",), "dedup": ("dedup",), "shards": ("shards",),
           "tokenizer": ("tokenizer",), "train": ("train",), "eval": ("eval",),
           "report": ("report.md", "report.html", "report_files")}
MARKERS = ".demo"
VERSION = 1


@dataclass
class DemoConfig:
    """Everything that shapes a demo run. The defaults are the README's demo (about 15 minutes on
    two CPU cores); tests pass smaller values."""

    out: str
    seed: int = 0
    scenes: int = 8000                  # English query-matching images on the simulated web
    web_files: int = 2                  # WARC + WAT file pairs ("crawl segments")
    dup_groups: int | None = None       # near-duplicate groups (default: scenes // 40)
    per_query_cap: int | None = None    # default: the simulated web's recommendation
    wordnet: str = "auto"               # auto (if found offline) | on | off
    image_size: int = 64                # downloaded images (img2dataset's border mode)
    download_processes: int = 1
    download_threads: int = 16
    detector_steps: int = 600
    detector_batch: int = 64
    detector_image_size: int = 32
    calibration_images: int = 1600
    samples_per_shard: int = 1000
    num_merges: int = 2000
    model: str = "tiny-rn"
    train_image_size: int | None = None  # CLIP input; None: the model config's (tiny-rn: 32)
    # CLIP training: tuned for >= 80% zero-shot shapes in ~7 CPU minutes (GPU sweep, 3 seeds x 5
    # settings on the 8,000-scene web: batch 128, lr 3e-3, warmup 100, 900 steps, context 24 gave
    # 0.983 / 0.965 / 0.973; batch 64 or warmup 20 stayed below 0.85 at the same sample count)
    batch_size: int = 128
    train_steps: int = 900
    context_length: int = 24       # the demo's alt texts are at most 21 tokens
    train_minutes: float | None = None  # set steps from a measured step time instead
    lr: float = 3e-3
    wd: float = 0.1
    warmup: int = 100
    eval_every: int = 150               # zero-shot shapes during training (curve in the report)
    heldout_per_class: int = 50
    threads: int = 2                    # torch intra-op threads (training, detector)
    force: bool = False
    progress: bool = True

    def stage_params(self, stage: str) -> dict:
        """The fields a stage's output depends on (its fingerprint, with the stages before it)."""
        pick = {
            "generate": ("seed", "scenes", "web_files", "dup_groups", "heldout_per_class"),
            "queries": ("wordnet",),
            "collect": ("per_query_cap", "seed"),
            "download": ("image_size",),
            "dedup": ("detector_steps", "detector_batch", "detector_image_size", "calibration_images",
                      "seed"),
            "shards": ("samples_per_shard",),
            "tokenizer": ("num_merges",),
            "train": ("model", "train_image_size", "context_length", "batch_size", "train_steps", "train_minutes", "lr",
                      "wd", "warmup",
                      "eval_every", "seed"),
            "eval": (),
            "report": (),
        }[stage]
        return {k: getattr(self, k) for k in pick}


# --- small helpers ------------------------------------------------------------------------------

def _fmt(n) -> str:
    if isinstance(n, float):
        return f"{n:,.1f}"
    return f"{n:,}" if isinstance(n, int) else str(n)


def summary_line(index: int, stage: str, s: dict) -> str:
    """``[ 3/10] collect    7,412 in -> 2,377 out | dropped: no_match 95, ... | 31.2 s (cpu 25.0 s)``"""
    head = f"[{index:2d}/{len(STAGES)}] {stage:<9}"
    if s.get("skipped"):
        return f"{head} skipped (done earlier: {_fmt(s.get('in'))} in -> {_fmt(s.get('out'))} out)"
    dropped = {k: v for k, v in (s.get("dropped") or {}).items() if v}
    drop = (" | dropped: " + ", ".join(f"{k} {_fmt(v)}" for k, v in dropped.items())) if dropped else ""
    note = f" | {s['note']}" if s.get("note") else ""
    return (f"{head} {_fmt(s.get('in'))} in -> {_fmt(s.get('out'))} out{drop}{note} | "
            f"{s.get('seconds', 0):.1f} s (cpu {s.get('cpu_seconds', 0):.1f} s)")


def _cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _fingerprint(params: dict, upstream: str) -> str:
    blob = json.dumps({"version": VERSION, "params": params, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# --- the stages ---------------------------------------------------------------------------------

class Demo:
    """One demo run over ``cfg.out``. ``run()`` executes the stages in order; ``self.summary``
    holds each stage's summary dict (what the report's stage table shows)."""

    def __init__(self, cfg: DemoConfig, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        self.dir = os.path.abspath(cfg.out)
        self.summary: dict[str, dict] = {}
        self.keys: dict[str, str] = {}

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> dict:
        import logging
        # Beam warns at import about optional GCP clients; the stages' own output is what matters
        logging.getLogger().setLevel(logging.ERROR)
        os.makedirs(self.path(MARKERS), exist_ok=True)
        started, cpu0 = time.time(), _cpu()
        upstream, redo = "", self.cfg.force
        for i, stage in enumerate(STAGES, 1):
            key = _fingerprint(self.cfg.stage_params(stage), upstream)
            self.keys[stage] = upstream = key
            marker = self.path(MARKERS, f"{stage}.json")
            done = read_json_or_none(marker)
            complete = (isinstance(done, dict) and done.get("key") == key
                        and all(os.path.lexists(self.path(p)) for p in OUTPUTS[stage]))
            if complete and not redo:
                self.summary[stage] = {**done["summary"], "skipped": True}
                self.log(summary_line(i, stage, self.summary[stage]))
                continue
            redo = True  # every later stage runs too
            attempt = self.path(MARKERS, f"{stage}.started")
            previous = read_json_or_none(attempt)
            if self.cfg.force or not (isinstance(previous, dict) and previous.get("key") == key):
                for p in OUTPUTS[stage]:  # other parameters (or --force): start this stage afresh
                    _remove(self.path(p))
            if os.path.exists(marker):
                os.unlink(marker)
            atomic_write_json(attempt, {"key": key, "time": time.time()})
            t0, c0 = time.time(), _cpu()
            result = getattr(self, f"stage_{stage}")()
            result.update(seconds=round(time.time() - t0, 2), cpu_seconds=round(_cpu() - c0, 2),
                          skipped=False)
            self.summary[stage] = result
            atomic_write_json(marker, {"key": key, "summary": result, "finished": time.time()})
            os.unlink(attempt)
            self.log(summary_line(i, stage, result))
        total = {"seconds": round(time.time() - started, 1), "cpu_seconds": round(_cpu() - cpu0, 1)}
        state = {"config": dataclasses.asdict(self.cfg), "stages": self.summary, "total": total,
                 "zeroshot": self._zeroshot_brief()}
        atomic_write_json(self.path("demo.json"), state)
        return state

    def _zeroshot_brief(self) -> dict:
        z = read_json_or_none(self.path("eval", "zeroshot.json")) or {}
        return {name: {"top1": r.get("top1"), "chance": r.get("chance")} for name, r in z.items()}

    # -- generate --------------------------------------------------------------------------
    def web_config(self):
        from wit_builder.sim.simweb import WebConfig
        return WebConfig(seed=self.cfg.seed, scenes=self.cfg.scenes, dup_groups=self.cfg.dup_groups)

    def stage_generate(self) -> dict:
        from wit_builder.sim.dumpgen import Page, write_dump, write_pageviews
        from wit_builder.sim import webgen
        from wit_builder.sim.heldout import write_heldout
        from wit_builder.sim.simweb import build_web
        from wit_builder.sim.simwiki import build_wiki

        cfg = self.cfg
        wiki = build_wiki(cfg.seed)
        pages = [Page(a["title"], a["text"], ns=a["ns"], id=a["id"], redirect=a["redirect"],
                      timestamp=a["timestamp"]) for a in wiki.articles]
        write_dump(pages, self.path("raw", "wiki", "enwiki-20240101-pages-articles-multistream.xml.bz2"),
                   multistream=True)
        hours: dict[str, list] = {}
        for row in wiki.pageviews:  # "20240115-000000" -> "20240115-00"
            hours.setdefault(row["hour"][:11], []).append(
                (row["domain"], row["title"], row["views"], row["bytes"]))
        pv_files = write_pageviews(hours, self.path("raw", "pageviews"))

        web = build_web(self.web_config())
        segments = max(1, cfg.web_files)
        for k in range(segments):
            seg = [self._webgen_page(webgen, p) for p in web.pages[k::segments]]
            base = f"CC-DEMO-20240115-{k:05d}"
            warc = self.path("raw", "web", f"{base}.warc.gz")
            webgen.write_warc(seg, warc)
            webgen.write_wat(seg, self.path("raw", "web", f"{base}.warc.wat.gz"),
                             warc_filename=os.path.basename(warc))
        web.write_manifest(self.path("raw", "manifest.json"))
        held = write_heldout(self.path("heldout"), per_class=cfg.heldout_per_class, seed=cfg.seed,
                             force=True, progress=cfg.progress)
        counts = web.counts()
        nbytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.path("raw"))
                     for f in fs)
        images = sum(s["images"] for s in held["sets"].values())
        return {"in": counts["img_tags"], "out": counts["image_urls"], "dropped": {},
                "note": (f"wiki {len(wiki.articles)} pages + {len(pv_files)} pageview hours; web "
                         f"{counts['pages']} pages in {segments} WARC + {segments} WAT "
                         f"({nbytes / 1e6:.1f} MB raw); held-out {images} images"),
                "wiki_pages": len(wiki.articles), "web_pages": counts["pages"],
                "heldout_images": images}

    @staticmethod
    def _webgen_page(webgen, page: dict):
        images = [webgen.Image(l["url"], l["alt"], l["title"]) for l in page["links"]
                  if l["path"] == "IMG@/src"]
        anchors = [(l["url"], l["text"]) for l in page["links"] if l["path"] == "A@/href"]
        return webgen.Page(page["url"], images=images, links=anchors, title=page["title"],
                           html=page["html"])

    def manifest(self) -> dict:
        m = getattr(self, "_manifest", None)
        if m is None:
            m = self._manifest = read_json_or_none(self.path("raw", "manifest.json"))
            if m is None:
                raise WitError(f"{self.path('raw', 'manifest.json')} is missing; re-run with --force")
        return m

    # -- queries ---------------------------------------------------------------------------
    def wordnet_parts(self) -> tuple[tuple[str, ...], str | None]:
        """The query parts: WordNet too when it is installed (never downloaded here)."""
        parts = ("unigram", "bigram", "title")
        if self.cfg.wordnet == "off":
            return parts, "WordNet part off (--wordnet off)"
        from queries import wordnet as wn
        try:
            wn.wordnet_root(None, allow_download=False)
        except WitError as exc:
            if self.cfg.wordnet == "on":
                raise
            return parts, f"WordNet not installed, part skipped ({str(exc).split(';')[0]})"
        return ("wordnet",) + parts, None

    def stage_queries(self) -> dict:
        from pipelines import queries
        from queries.build import BuildConfig, QueryParams
        from wit_builder.sim.simwiki import DEMO_THRESHOLDS

        parts, note = self.wordnet_parts()
        params = QueryParams(parts=parts, **DEMO_THRESHOLDS)
        stats = queries.run(BuildConfig(dumps=[self.path("raw", "wiki")], out=self.path("queries"),
                                        pageviews=[self.path("raw", "pageviews")], wordnet_download=False,
                                        params=params), overwrite=True)
        pages = stats.get("skipped", {}).get("pages", {})
        sizes = ", ".join(f"{p} {v['size']:,}" for p, v in stats["parts"].items() if v["enabled"])
        return {"in": stats["corpus"]["pages_read"] if "pages_read" in stats.get("corpus", {})
                else sum(pages.values()) + stats["corpus"].get("articles", 0),
                "out": stats["output"]["queries"],
                "dropped": {f"pages_{k}": v for k, v in pages.items() if isinstance(v, int)},
                "note": f"parts: {sizes}" + (f"; {note}" if note else "")}

    # -- collect ---------------------------------------------------------------------------
    def cap(self) -> int:
        return int(self.cfg.per_query_cap or self.manifest()["recommended"]["per_query_cap"])

    def stage_collect(self) -> dict:
        from pipelines import collect
        from wit_builder.collect import make_config
        web = self.path("raw", "web")
        cfg = make_config(self.path("queries", "queries.parquet"), [f"{web}/*.warc.wat.gz", f"{web}/*.warc.gz"],
                          self.path("collect"), per_query_cap=self.cap(), seed=self.cfg.seed, langs=("en",),
                          num_shards=max(1, self.cfg.web_files))
        stats = collect.run(cfg, overwrite=True)
        dropped = {k: v for k, v in stats["dropped"].items() if v}
        dropped["balancing"] = stats["matched"] - stats["kept"]
        return {"in": stats["pairs_extracted"], "out": stats["kept"], "dropped": dropped,
                "note": (f"{stats['matched']:,} matched, cap {stats['per_query_cap']}, "
                         f"{stats['head_queries']} head queries"),
                "matched": stats["matched"], "per_query_cap": stats["per_query_cap"]}

    # -- download --------------------------------------------------------------------------
    def stage_download(self) -> dict:
        from pipelines import download
        from wit_builder.download import DownloadOptions
        from wit_builder.sim.loopback import LoopbackServer
        from wit_builder.sim.simweb import build_web

        web = build_web(self.web_config())
        with LoopbackServer(web.routes()) as server:  # 127.0.0.1, a free port
            port = server.port
            opts = DownloadOptions(
                image_size=self.cfg.image_size, processes=self.cfg.download_processes,
                threads=self.cfg.download_threads, timeout=10,
                resolve=web.connect_to(server.port), allowed_endpoints=[f"127.0.0.1:{server.port}"])
            s = download.run(self.path("collect", "balanced"), self.path("images"), opts,
                             progress=self.cfg.progress)
        if s.get("incomplete_shards"):
            raise WitError(f"download: shards {', '.join(s['incomplete_shards'])} are incomplete "
                           f"(see {self.path('images', '_wit', 'img2dataset.log')}); re-run to retry")
        return {"in": s["samples"], "out": s["success"], "dropped": dict(s["by_error_kind"]),
                "note": f"{s['shards']} shards, SSRF guard on (only 127.0.0.1:{port} allowed)"}

    def image_shards(self) -> list[str]:
        d = self.path("images")
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".tar"))

    # -- dedup -----------------------------------------------------------------------------
    def stage_dedup(self) -> dict:
        from pipelines import dedup
        from wit_builder.dedup import DedupConfig
        from wit_builder.detector import calibrate_detector, train_detector

        cfg, shards = self.cfg, self.image_shards()
        det = self.path("dedup", "detector.pt")
        os.makedirs(self.path("dedup"), exist_ok=True)
        train_detector(shards, det, steps=cfg.detector_steps, batch_size=cfg.detector_batch,
                       arch="tiny", image_size=cfg.detector_image_size, seed=cfg.seed,
                       threads=cfg.threads, progress=cfg.progress,
                       checkpoint_every=max(50, cfg.detector_steps // 3))
        # Calibrated on freshly rendered, distinct scenes, not on a held-out split of the web's
        # images: those contain the planted near-duplicates, which calibration would count as
        # false positives (pushing the threshold to ~1.0, so that nothing is deduplicated).
        images = calibration_images(cfg.calibration_images, cfg.seed, cfg.image_size)
        target = corpus_scaled_precision(0.99, len(images), self.downloaded_images())
        cal = calibrate_detector(det, images=images, use_all=True, target_precision=target,
                                 max_images=len(images), seed=cfg.seed, threads=cfg.threads,
                                 progress=cfg.progress)
        stats = dedup.run(DedupConfig(tuple(shards), det, self.path("dedup"), threads=cfg.threads))
        dropped = {"near_duplicate": stats["dropped_duplicates"]}
        dropped.update({f"undecodable_{k}": v for k, v in stats["skipped"].items()})
        return {"in": stats["images"], "out": stats["kept"], "dropped": dropped,
                "note": (f"{stats['duplicate_clusters']} duplicate clusters, threshold "
                         f"{stats['threshold']:.3f} (precision {cal['target_precision']:.4f} on "
                         f"{cal['images']} rendered calibration images, i.e. ~0.99 at this "
                         f"corpus's size)")}

    def downloaded_images(self) -> int:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        d, n = self.path("images"), 0
        for f in sorted(os.listdir(d)):
            if f[:1].isdigit() and f.endswith(".parquet"):
                status = pq.read_table(os.path.join(d, f), columns=["status"]).column("status")
                n += int(pc.sum(pc.equal(status, "success")).as_py() or 0)
        return n

    # -- shards ----------------------------------------------------------------------------
    def stage_shards(self) -> dict:
        from wit_builder.shards import write_shards
        m = write_shards(self.path("images"), self.path("shards"), dedup=self.path("dedup"),
                         samples_per_shard=self.cfg.samples_per_shard, progress=self.cfg.progress)
        t = m["totals"]
        dropped = {"failed_download": t["download_failed"], "dedup": t["dropped_by_dedup"],
                   "missing_in_tar": t["missing_in_tar"]}
        return {"in": t["download_rows"], "out": t["samples"], "dropped": dropped,
                "note": f"{len(m['shards'])} shards, train data {os.path.relpath(m['train_data'], self.dir)}",
                "train_data": m["train_data"]}

    def train_data(self) -> str:
        m = read_json_or_none(self.path("shards", "manifest.json"))
        if not m:
            raise WitError(f"{self.path('shards', 'manifest.json')} is missing; re-run with --force")
        return m["train_data"]

    # -- tokenizer -------------------------------------------------------------------------
    def stage_tokenizer(self) -> dict:
        from trainer.tokenizer import Tokenizer, train_merges
        from trainer.captions import iter_captions

        captions = list(iter_captions(self.train_data()))
        out = train_merges(captions, self.cfg.num_merges, self.path("tokenizer", "merges.txt"))
        tok = Tokenizer.from_merges(out)
        return {"in": len(captions), "out": len(tok.merges), "dropped": {},
                "note": f"merges learned (asked {self.cfg.num_merges}), vocabulary {tok.vocab_size}"}

    # -- train -----------------------------------------------------------------------------
    def train_steps(self) -> int:
        if not self.cfg.train_minutes:
            return self.cfg.train_steps
        seconds = measure_step_seconds(self.cfg.model, self.cfg.batch_size,
                                       self.cfg.train_image_size, self.cfg.threads)
        return max(10, int(self.cfg.train_minutes * 60 / seconds))

    def stage_train(self) -> dict:
        from trainer.train import TrainConfig, train
        cfg, held = self.cfg, self.path("heldout")
        steps = self.train_steps()
        s = train(TrainConfig(
            train_data=self.train_data(), out=self.path("train"), model=cfg.model,
            tokenizer=self.path("tokenizer", "merges.txt"), batch_size=cfg.batch_size,
            epochs=10_000, max_steps=steps, lr=cfg.lr, wd=cfg.wd, warmup=min(cfg.warmup, steps),
            image_size=cfg.train_image_size, context_length=cfg.context_length, workers=1, threads=cfg.threads, seed=cfg.seed,
            resume="latest", save_every=max(50, steps // 4), log_every=10,
            eval_every=cfg.eval_every, zeroshot_dir=os.path.join(held, "shapes"),
            zeroshot_classes=os.path.join(held, "shapes_classes.txt"),
            zeroshot_templates=os.path.join(held, "shapes_templates.txt"),
            progress=cfg.progress))
        seen = s["step"] * s["global_batch_size"]
        return {"in": s["num_samples"], "out": s["step"], "dropped": dict(s.get("skipped") or {}),
                "note": (f"steps of {s['global_batch_size']} pairs ({seen / max(1, s['num_samples']):.1f} "
                         f"epochs), final loss {s['final_loss']:.3f}, {s['samples_per_s']:.0f} pairs/s"),
                "final_loss": s["final_loss"]}

    # -- eval ------------------------------------------------------------------------------
    def stage_eval(self) -> dict:
        results = evaluate_zeroshot(self.path("train", "checkpoints", "latest.pt"), self.path("heldout"),
                                    self.path("eval"))
        parts = [f"{name} top-1 {100 * r['top1']:.1f}% (chance {100 * r['chance']:.1f}%)"
                 for name, r in results.items()]
        return {"in": sum(r["num_images"] for r in results.values()),
                "out": sum(int(round(r["top1"] * r["num_images"])) for r in results.values()),
                "dropped": {}, "note": "correct; " + ", ".join(parts),
                "top1": {name: r["top1"] for name, r in results.items()}}

    # -- report ----------------------------------------------------------------------------
    def stage_report(self) -> dict:
        from wit_builder.sim.report import build_report
        stages = {"queries": self.path("queries"), "collect": self.path("collect"),
                  "download": self.path("images"), "dedup": self.path("dedup"),
                  "shards": self.path("shards"), "train": self.path("train"), "eval": self.path("eval")}
        summary = {k: v for k, v in self.summary.items()}
        md, html_path = build_report(self.dir, stages=stages, summary=summary, cap=self.cap(),
                                     extra_sections=[problem_cases_section(self.dir)])
        figures = len(os.listdir(self.path("report_files")))
        return {"in": len(stages), "out": figures, "dropped": {},
                "note": f"{os.path.relpath(md, self.dir)}, {os.path.relpath(html_path, self.dir)} "
                        f"({figures} figures)"}


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


def calibration_images(n: int, seed: int, size: int) -> list:
    """``n`` freshly rendered scenes (their own seed stream, so none is on the web or in the
    held-out set), resized as ``wit download`` stores images (img2dataset's ``border`` mode:
    longer side to ``size``, padded to a white square)."""
    from PIL import Image

    from wit_builder.sim.render import render, sample_scene, scene_seed
    out = []
    for i in range(n):
        img = render(sample_scene(scene_seed("calibration", seed, i)))
        k = size / max(img.size)
        img = img.resize((max(1, round(img.width * k)), max(1, round(img.height * k))),
                         Image.Resampling.BOX)
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        out.append(canvas)
    return out


# --- evaluation with a confusion matrix ---------------------------------------------------------

def evaluate_zeroshot(checkpoint: str, heldout: str, out: str, batch_size: int = 100) -> dict:
    """Zero-shot top-1 on each held-out class set (``wit eval``'s code: prompt-ensembled
    classifier, eval transform), plus the confusion matrix. Writes ``out/metrics.json`` (``wit
    eval``'s metrics per set) and ``out/zeroshot.json`` (what the report reads); returns the
    latter."""
    from collections import Counter

    import torch

    from trainer import evaluate as ev
    from trainer.api import load
    from trainer.evaluate import evaluate_checkpoint
    from trainer.zeroshot import ZeroShotClassifier, read_lines
    from wit_builder.sim.report import confusion_matrix

    bundle = load(checkpoint, device="cpu")
    model, preprocess, tokenizer = bundle
    meta = read_json_or_none(os.path.join(heldout, "heldout.json")) or {}
    metrics, results = {}, {}
    for name in ("shapes", "colours"):
        folder = os.path.join(heldout, name)
        classes_file, templates_file = (os.path.join(heldout, f"{name}_{x}.txt") for x in ("classes", "templates"))
        metrics[name] = evaluate_checkpoint(checkpoint, zeroshot_dir=folder, classes=classes_file,
                                            templates=templates_file, model_bundle=bundle,
                                            batch_size=batch_size)["zeroshot"]
        classes = read_lines(classes_file, "classes")
        clf = ZeroShotClassifier(model, tokenizer, classes, read_lines(templates_file, "templates"))
        labels, preds = [], []
        skipped: Counter = Counter()
        items = ev.labelled_source(folder, preprocess, skipped, classes)
        for images, y in ev.batched(items, batch_size):
            preds += clf.logits(images).argmax(dim=1).tolist()
            labels += torch.as_tensor(y).tolist()
        m = confusion_matrix(labels, preds, len(classes))
        results[name] = {"classes": classes, "confusion": m.tolist(),
                         "top1": float(m.trace()) / max(1, int(m.sum())),
                         "top5": metrics[name].get("top5"), "num_images": int(m.sum()),
                         "chance": float((meta.get("sets", {}).get(name) or {}).get("chance_top1", 1 / len(classes))),
                         "skipped": dict(skipped)}
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "metrics.json"), {"checkpoint": checkpoint, **metrics})
    atomic_write_json(os.path.join(out, "zeroshot.json"), results)
    return results


def measure_step_seconds(model_name: str, batch_size: int, image_size: int | None, threads: int,
                         steps: int = 3) -> float:
    """Seconds per training step of ``model_name`` on this machine (random data, after one
    warm-up step), plus 15% for data loading: how ``--train-minutes`` turns into steps."""
    import torch

    from trainer.loss import ClipLoss
    from trainer.model import create_model
    if threads:
        torch.set_num_threads(threads)
    model, cfg = create_model(model_name, image_size=image_size, vocab_size=4096)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = ClipLoss()
    size = cfg["vision_cfg"]["image_size"]
    x = torch.randn(batch_size, 3, size, size)
    t = torch.randint(1, 4000, (batch_size, cfg["text_cfg"]["context_length"]))
    t[:, -1] = 4095
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        img, txt, scale = model(x, t)
        loss_fn(img, txt, scale).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return 1.15 * sorted(times[1:])[len(times[1:]) // 2]


# --- the report's extra section: where each problem case was filtered ---------------------------

def problem_cases_section(demo_dir: str):
    """A table from the simulated web's manifest: per problem case, how many links there were,
    the stage expected to drop them, and where they actually went (collect / download / dedup /
    final shards), read back from the stage outputs by uid and URL."""
    from wit_builder.sim.report import Section
    s = Section("Problem cases of the simulated web", "cases")
    try:
        t = trace_cases(demo_dir)
    except (OSError, ValueError, KeyError) as exc:
        return s.note(f"could not trace the problem cases: {exc}")
    rows = [[case, r["links"], r["expected"], r["collected"], r["downloaded"], r["in_shards"]]
            for case, r in t.items()]
    s.p("Every problem case of the simulated web, followed through the stages by uid (collect) and "
        "URL (download, shards). 'collected' counts links whose pair reached `balanced/`.")
    return s.table(["case", "links", "expected to be dropped by", "collected", "downloaded",
                    "in final shards"], rows)


_EXPECTED_DROP = {"head": "balance (capped)", "non_english": "collect (language)",
                  "no_query": "collect (no match)", "empty_alt": "collect (empty text)",
                  "missing_alt": "collect (empty text)", "data_uri": "collect (not http)",
                  "broken_link": "download (404)", "opt_out": "download (X-Robots-Tag)",
                  "corrupt": "download (decode) or dedup", "not_image": "download (content type)",
                  "near_duplicate": "dedup (one kept per group)", "redirect": "nothing (must download)"}


def trace_cases(demo_dir: str) -> dict:
    """``{case: {"links", "expected", "collected", "downloaded", "in_shards"}}`` for the report
    and the end-to-end test."""
    import pyarrow.parquet as pq
    m = read_json_or_none(os.path.join(demo_dir, "raw", "manifest.json"))
    if m is None:
        raise OSError("raw/manifest.json missing")

    def column(folder: str, name: str, pattern=None) -> set:
        out = set()
        if not os.path.isdir(folder):
            return out
        for f in sorted(os.listdir(folder)):
            if f.endswith(".parquet") and (pattern is None or pattern(f)):
                out.update(pq.read_table(os.path.join(folder, f), columns=[name]).column(name).to_pylist())
        return out

    collected = column(os.path.join(demo_dir, "collect", "balanced"), "uid")
    images = os.path.join(demo_dir, "images")
    ok_urls = set()
    if os.path.isdir(images):
        for f in sorted(os.listdir(images)):
            if f[:1].isdigit() and f.endswith(".parquet"):
                t = pq.read_table(os.path.join(images, f), columns=["url", "status"]).to_pydict()
                ok_urls.update(u for u, st in zip(t["url"], t["status"]) if st == "success")
    shard_urls = column(os.path.join(demo_dir, "shards"), "url")
    out = {}
    for case, expected in _EXPECTED_DROP.items():
        links = [l for l in m["links"] if case in l["cases"]]
        out[case] = {"links": len(links), "expected": expected,
                     "collected": sum(1 for l in links if l.get("uid") in collected),
                     "downloaded": sum(1 for l in links if l.get("uid") in collected and l["url"] in ok_urls),
                     "in_shards": sum(1 for l in links if l.get("uid") in collected and l["url"] in shard_urls)}
    return out


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo; returns ``DIR/demo.json``'s content."""
    return Demo(cfg, log=log).run()
