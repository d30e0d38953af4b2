"""A ``wit demo`` run's configuration and bookkeeping (the stages are in ``pipelines/demo.py``).

:class:`DemoConfig` holds everything that shapes a run and which fields each stage depends on;
:class:`DemoRun` is what every stage function gets (the config, the run folder, the summaries so
far). A stage's key fingerprints its parameters and the previous stage's key; a finished stage
writes ``DIR/.demo/STAGE.json`` (key and summary), an interrupted one leaves
``DIR/.demo/STAGE.started``, so a re-run skips what is done and resumes what was cut short.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

from wit_builder.core import WitError, atomic_write_json, read_json_or_none

__all__ = ["STAGES", "OUTPUTS", "MARKERS", "DemoConfig", "DemoRun", "summary_line", "cpu_seconds",
           "fingerprint", "finished_marker", "run_stage"]

STAGES = ("generate", "queries", "collect", "download", "dedup", "shards", "tokenizer", "baseline",
          "train", "eval", "report")
# each stage's output (relative to DIR); removed before the stage is redone from scratch
OUTPUTS = {"generate": ("raw", "heldout"), "queries": ("queries",), "collect": ("collect",),
           "download": ("images",), "dedup": ("dedup",), "shards": ("shards",),
           "tokenizer": ("tokenizer",), "train": ("train",), "baseline": ("baseline",), "eval": ("eval",),
           "report": ("report.md", "report.html", "report_files")}
MARKERS = ".demo"
VERSION = 1


@dataclass
class DemoConfig:
    """Everything that shapes a demo run. The defaults are the README's demo (about 15 minutes on
    two CPU cores); tests pass smaller values."""

    out: str
    seed: int = 0
    # English query-matching images on the simulated web (None: :meth:`DemoConfig.web_scenes`,
    # 8,000, or 16,000 where CLIP trains in bf16 on AMX and so takes 4x the steps: a larger web
    # pays only with more steps; 600 steps on 16,000 scenes gave +3.3 / +1.5 points, 2,400 steps
    # took 89.5% / 62.9% on 8,000 scenes to 96.8% / 72.8% on 16,000 (docs/demo.md))
    scenes: int | None = None
    web_files: int = 2                  # WARC + WAT file pairs ("crawl segments")
    dup_groups: int | None = None       # near-duplicate groups (default: scenes // 40)
    per_query_cap: int | None = None    # default: the simulated web's recommendation
    wordnet: str = "auto"               # auto (if found offline) | on | off
    image_size: int = 64                # downloaded images (img2dataset's border mode)
    download_processes: int = 2         # two img2dataset shards at a time (one per core)
    download_threads: int = 16
    download_shard_size: int = 4000     # the ~6,800 balanced pairs of 8,000 scenes: two shards
    detector_steps: int = 450
    detector_batch: int = 64
    detector_image_size: int = 32
    calibration_images: int = 1600
    samples_per_shard: int = 1000
    num_merges: int = 2000
    model: str = "tiny-rn"
    train_image_size: int | None = None  # CLIP input; None: the model config's (tiny-rn: 32)
    # CLIP training. The styled web (six drawing styles, captions naming colour, style, ground and
    # brand as well as the shape) rewards large batches: at the same 115,200 pairs seen, batch 64 x
    # 900 steps reached 17.2% zero-shot shapes, 128 x 900 57.5%, 256 x 450 61.5%, 512 x 225
    # 46.0% (docs/demo.md). lr 3e-3 and warmup 100 come
    # from a GPU sweep on the single-style web (3 seeds x 5 settings; lr 6e-3 was worse here too).
    # 600 steps: tiny-rn's text tower is 64 wide (was 128), a step 1.54x faster, so 600 steps cost
    # about what 450 did.
    # Steps (None: :meth:`DemoConfig.clip_steps`): 600, or 2400 where the CPU has AMX and CLIP
    # trains in bf16 (a step ~4x cheaper there): on the same shards 600 steps gave shapes 72.0%
    # in distribution / 41.4% shifted, 1200 85.0% / 51.3%, 2400 89.5% / 62.9% (docs/demo.md).
    batch_size: int = 256
    train_steps: int | None = None
    context_length: int = 24       # the demo's alt texts are at most 21 tokens
    train_minutes: float | None = None  # set steps from a measured step time instead
    lr: float = 3e-3
    wd: float = 0.1
    warmup: int = 100
    eval_every: int = 100               # zero-shot shapes during training (curve in the report)
    # CLIP training precision: auto = bf16 where the CPU has native bf16 (AMX / AVX512-BF16), else
    # fp32 (trainer/precision.py); the report's train line says which ran
    precision: str = "auto"
    # the supervised baseline (effective robustness): the same image tower and shards, a linear
    # head on the shapes named in the captions, cross-entropy; 0 steps skips it; None: half the
    # CLIP steps (a quarter of CLIP's samples at batch 128, as 300 against 600 before)
    baseline_steps: int | None = None
    baseline_batch: int = 128
    baseline_lr: float = 1e-3
    heldout_per_class: int = 50
    threads: int = 2                    # torch intra-op threads (training, detector)
    force: bool = False
    progress: bool = True

    def _bf16_on_amx(self) -> bool:
        """Whether CLIP trains in bf16 on a CPU with AMX here (``precision`` auto or bf16): its
        bf16 tiles made the demo's step ~4x cheaper than fp32, which the defaults spend on more
        steps and a larger web. AVX512-BF16 alone speeds matrix products up less."""
        from trainer.precision import cpu_bf16_flags
        # auto resolves to bf16 on any CPU with a native-bf16 flag, AMX's among them
        return self.precision in ("auto", "bf16") and "amx_bf16" in cpu_bf16_flags()

    def web_scenes(self) -> int:
        """The simulated web's size: ``scenes``, or by default 8,000, and 16,000 where
        :meth:`clip_steps` defaults to 2,400 (more images pay only with more steps)."""
        if self.scenes is not None:
            return self.scenes
        return 16000 if self._bf16_on_amx() else 8000

    def clip_steps(self) -> int:
        """CLIP training steps: ``train_steps``, or by default 600, and 2400 when ``precision``
        resolves to bf16 on a CPU with AMX (:meth:`_bf16_on_amx`)."""
        if self.train_steps is not None:
            return self.train_steps
        return 2400 if self._bf16_on_amx() else 600

    def supervised_steps(self) -> int:
        """The supervised baseline's steps: ``baseline_steps``, or half of :meth:`clip_steps`
        (300 under ``train_minutes``: the CLIP steps are only known once measured, and the
        baseline runs first)."""
        if self.baseline_steps is not None:
            return self.baseline_steps
        return 300 if self.train_minutes else self.clip_steps() // 2

    def resolved(self) -> dict:
        """The sizes the run uses where the configuration left them to the defaults (demo.json
        records them next to the configuration): the web's scenes, CLIP's steps (None under
        ``train_minutes``: measured in the train stage) and the baseline's steps."""
        return {"scenes": self.web_scenes(),
                "train_steps": None if self.train_minutes else self.clip_steps(),
                "baseline_steps": self.supervised_steps()}

    def stage_params(self, stage: str) -> dict:
        """The fields a stage's output depends on (its fingerprint, with the stages before it)."""
        pick = {
            "generate": ("seed", "scenes", "web_files", "dup_groups", "heldout_per_class"),
            "queries": ("wordnet",),
            "collect": ("per_query_cap", "seed"),
            "download": ("image_size", "download_shard_size"),
            "dedup": ("detector_steps", "detector_batch", "detector_image_size", "calibration_images",
                      "seed"),
            "shards": ("samples_per_shard",),
            "tokenizer": ("num_merges",),
            "train": ("model", "train_image_size", "context_length", "batch_size", "train_steps",
                      "train_minutes", "lr", "wd", "warmup", "eval_every", "precision", "seed"),
            "baseline": ("model", "train_image_size", "baseline_batch", "baseline_steps", "baseline_lr",
                         "wd", "seed"),
            "eval": (),
            "report": (),
        }[stage]
        params = {k: getattr(self, k) for k in pick}
        if "scenes" in params:         # the web that is built, defaults resolved
            params["scenes"] = self.web_scenes()
        if "train_steps" in params:    # the steps that run, defaults resolved
            params["train_steps"] = self.clip_steps()
        if "baseline_steps" in params:
            params["baseline_steps"] = self.supervised_steps()
        if "model" in params:  # the config's contents, not only its name (a bundled config changes)
            from trainer.model import get_model_config
            params["model"] = {"name": self.model, "config": get_model_config(self.model)}
        return params



@dataclass
class DemoRun:
    """One demo run over ``cfg.out``: what every stage function gets. ``summary`` holds each
    finished stage's summary dict (what the report's stage table shows)."""

    cfg: DemoConfig
    summary: dict[str, dict] = field(default_factory=dict)
    dir: str = field(init=False)
    _manifest: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.dir = os.path.abspath(self.cfg.out)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def manifest(self) -> dict:
        """The simulated web's ``raw/manifest.json`` (read once)."""
        if self._manifest is None:
            self._manifest = read_json_or_none(self.path("raw", "manifest.json"))
            if self._manifest is None:
                raise WitError(f"{self.path('raw', 'manifest.json')} is missing; re-run with --force")
        return self._manifest

    def cap(self) -> int:
        """The per-query cap: ``--per-query-cap``, or the simulated web's recommendation."""
        return int(self.cfg.per_query_cap or self.manifest()["recommended"]["per_query_cap"])

    def train_data(self) -> str:
        m = read_json_or_none(self.path("shards", "manifest.json"))
        if not m:
            raise WitError(f"{self.path('shards', 'manifest.json')} is missing; re-run with --force")
        return m["train_data"]


# --- markers and summaries ---------------------------------------------------------------------

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


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def fingerprint(params: dict, upstream: str) -> str:
    """A stage's key: its parameters and the key of the stage before it."""
    blob = json.dumps({"version": VERSION, "params": params, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def finished_marker(run: DemoRun, stage: str, key: str) -> dict | None:
    """The stage's marker when it finished with these parameters and its outputs are there."""
    done = read_json_or_none(run.path(MARKERS, f"{stage}.json"))
    if (isinstance(done, dict) and done.get("key") == key
            and all(os.path.lexists(run.path(p)) for p in OUTPUTS[stage])):
        return done
    return None


def run_stage(run: DemoRun, stage: str, key: str, function: Callable[[DemoRun], dict]) -> dict:
    """Run one stage's ``function`` (afresh unless an interrupted attempt had the same ``key``),
    adding its times to the summary it returns; write its marker."""
    marker, attempt = run.path(MARKERS, f"{stage}.json"), run.path(MARKERS, f"{stage}.started")
    previous = read_json_or_none(attempt)
    if run.cfg.force or not (isinstance(previous, dict) and previous.get("key") == key):
        for p in OUTPUTS[stage]:  # other parameters (or --force): start this stage afresh
            _remove(run.path(p))
    if os.path.exists(marker):
        os.unlink(marker)
    atomic_write_json(attempt, {"key": key, "time": time.time()})
    t0, c0 = time.time(), cpu_seconds()
    result = function(run)
    result.update(seconds=round(time.time() - t0, 2), cpu_seconds=round(cpu_seconds() - c0, 2),
                  skipped=False)
    atomic_write_json(marker, {"key": key, "summary": result, "finished": time.time()})
    os.unlink(attempt)
    return result
