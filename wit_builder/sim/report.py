"""The demo's report: ``DIR/report.md`` and a self-contained ``DIR/report.html`` from stage outputs.

It reads only the files that ``docs/schemas.md`` defines (plus a small per-stage summary dict), so
it works on any run that follows the contract, and it skips, with a note, whatever is missing:

=========================  =========================================================================
section                    reads
=========================  =========================================================================
stage summary              ``summary``: ``{stage: {"in", "out", "dropped": {reason: n}, "seconds"}}``
query list                 ``Q/queries.parquet`` (``sources``, ``unigram_count``), ``Q/stats.json``
balancing                  ``OUT/counts.parquet``, ``OUT/balanced/*.parquet`` (``query_ids``),
                           ``OUT/stats.json`` (the per-query cap, ``per_query_cap``)
download                   ``IMAGES/NNNNN.parquet`` (``status``, ``error_kind``)
duplicate clusters         ``DEDUP/decisions.parquet`` + the images in ``IMAGES/NNNNN.tar``
shards                     ``SHARDS/manifest.json``, ``SHARDS/sizes.json``
training curves            ``RUN/log.jsonl``
zero-shot                  ``zeroshot``: ``{set: {"classes", "confusion" | ("labels",
                           "predictions"), "top1", "chance"}}`` or ``EVAL/zeroshot.json``
artifacts                  every file under each stage folder: path, count, size, and its actual
                           schema (parquet columns and types, JSON keys, tar members)
=========================  =========================================================================

Figures are drawn with matplotlib (Agg) and saved as ``DIR/report_files/*.png``; the Markdown
links them, the HTML embeds them as base64 so it can be mailed or opened anywhere.

API: :func:`build_report` (everything), :func:`confusion_matrix`, and the section builders
(``queries_section(path)``, ...) that return a :class:`Section`. The dataset stages' sections are
in ``datasections.py``, the document model and its Markdown/HTML writers in ``reportdoc.py``; this
module has the run's own sections (stages, training, zero-shot, artifacts) and puts them together.
"""
from __future__ import annotations

import json
import os
import re
import tarfile

import numpy as np

from wit_builder.core import WitError, atomic_open, read_json_or_none
from wit_builder.sim.datasections import (balance_section, dedup_section, download_section,
                                          queries_section, shards_section)
from wit_builder.sim.reportdoc import Report, Section, cell_text, figure_png, pyplot

__all__ = ["build_report", "confusion_matrix", "Section", "Report", "STAGES", "queries_section",
           "balance_section", "download_section", "dedup_section", "shards_section",
           "training_section", "zeroshot_section", "artifacts_section", "summary_section"]

# stage name -> what docs/schemas.md calls its output folder
STAGES = ("queries", "collect", "download", "dedup", "shards", "train", "eval")


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``[true class, predicted class]`` counts (int64)."""
    m = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(labels, predictions):
        m[int(t), int(p)] += 1
    return m


# --- sections --------------------------------------------------------------------------------------

def summary_section(summary: dict | None) -> Section:
    s = Section("Stages", "stages")
    if not summary:
        return s.note("no stage summary was given")
    rows = []
    for stage, info in summary.items():
        dropped = info.get("dropped") or {}
        rows.append([stage, info.get("in"), info.get("out"),
                     ", ".join(f"{k}: {cell_text(v)}" for k, v in dropped.items()) or "-",
                     None if info.get("seconds") is None else round(float(info["seconds"]), 1),
                     "skipped (done)" if info.get("skipped") else ""])
    s.table(["stage", "records in", "records out", "dropped by reason", "seconds", "note"], rows)
    total = sum(float(i.get("seconds") or 0) for i in summary.values())
    return s.p(f"Total time: {total:.0f} s.")


def _flatten(rec: dict, prefix: str = "") -> dict:
    """``{"zeroshot": {"top1": x}}`` -> ``{"zeroshot.top1": x}`` (``wit train`` nests its
    evaluation metrics per kind); top-level keys are kept as they are."""
    out = {}
    for k, v in rec.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def training_section(run_dir: str | None) -> Section:
    s = Section("Training", "training")
    path = os.path.join(run_dir or "", "log.jsonl")
    if not run_dir or not os.path.exists(path):
        return s.note("`wit train` log (log.jsonl) not found")
    train, evals = [], []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                (train if "loss" in rec else evals).append(_flatten(rec))
    if not train:
        return s.note("log.jsonl has no training steps")
    plt = pyplot()
    keys = [k for k in ("loss", "lr", "logit_scale", "samples_per_s") if any(k in r for r in train)]
    eval_keys = sorted({k for r in evals for k, v in r.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                        and k not in ("step", "epoch", "time") and not k.endswith(
                            ("num_images", "num_classes", "num_pairs", "num_train", "num_test"))
                        and ".skipped." not in k})
    panels = keys + (["evaluation"] if eval_keys else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "evaluation":
            for k in eval_keys:
                pts = [(r["step"], r[k]) for r in evals if isinstance(r.get(k), (int, float))]
                ax.plot(*zip(*pts), "o-", label=k, ms=3)
            ax.legend(fontsize=7)
        else:
            pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*pts), lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
    s.figure("training.png", figure_png(fig), "Training curves from RUN/log.jsonl")
    last = train[-1]
    s.table(["", "step", "loss", "lr", "logit_scale"],
            [["first", train[0]["step"], train[0].get("loss"), train[0].get("lr"), train[0].get("logit_scale")],
             ["last", last["step"], last.get("loss"), last.get("lr"), last.get("logit_scale")]])
    return s


def zeroshot_section(results: dict | str | None) -> Section:
    s = Section("Zero-shot evaluation", "zeroshot")
    if isinstance(results, str):
        path = os.path.join(results, "zeroshot.json") if os.path.isdir(results) else results
        results = read_json_or_none(path)
    if not results:
        return s.note("no zero-shot results")
    plt = pyplot()
    rows = []
    for name, r in results.items():
        classes = list(r["classes"])
        if "confusion" in r:
            m = np.asarray(r["confusion"], np.int64)
        elif "labels" in r and "predictions" in r:
            m = confusion_matrix(r["labels"], r["predictions"], len(classes))
        else:
            raise WitError(f"zero-shot results for {name!r} need 'confusion' or 'labels' + 'predictions'")
        if m.shape != (len(classes), len(classes)):
            raise WitError(f"zero-shot results for {name!r}: confusion matrix shape {m.shape} "
                           f"does not match {len(classes)} classes")
        total = int(m.sum())
        top1 = r.get("top1", float(np.trace(m)) / max(1, total))
        chance = r.get("chance", 1.0 / len(classes))
        rows.append([name, len(classes), total, f"{100 * top1:.1f}%", f"{100 * chance:.1f}%"])
        norm = m / np.maximum(1, m.sum(axis=1, keepdims=True))
        fig, ax = plt.subplots(figsize=(0.55 * len(classes) + 2.5, 0.5 * len(classes) + 1.8))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}: top-1 {100 * top1:.1f}% (chance {100 * chance:.1f}%)")
        s.figure(f"confusion_{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.png", figure_png(fig),
                 f"Zero-shot confusion matrix, {name}")
    figures, s.blocks = s.blocks, []
    s.table(["set", "classes", "images", "top-1", "chance"], rows)
    s.blocks += figures
    return s


# --- artifacts -------------------------------------------------------------------------------------

_PATTERN = re.compile(r"\d{5,}")


def _describe(path: str) -> str:
    name = path.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq
            schema = pq.read_schema(path)
            return ", ".join(f"{f.name}: {f.type}" for f in schema)
        if name.endswith(".jsonl"):
            with open(path, encoding="utf-8") as fh:
                first = json.loads(fh.readline() or "{}")
            return "JSON lines: " + ", ".join(first) if isinstance(first, dict) else "JSON lines"
        if name.endswith(".json"):
            obj = read_json_or_none(path)
            if isinstance(obj, dict):
                keys = list(obj)
                return "JSON object: " + ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
            return f"JSON {type(obj).__name__}"
        if name.endswith(".tar"):
            with tarfile.open(path) as tf:
                names = tf.getnames()
            keys = {os.path.basename(n).split(".", 1)[0] for n in names}
            exts = sorted({n.rsplit(".", 1)[-1] for n in names if "." in n})
            return f"WebDataset tar: {len(keys)} samples ({', '.join('.' + e for e in exts)})"
        if name.endswith(".png"):
            from PIL import Image
            with Image.open(path) as im:
                return f"PNG figure {im.width}x{im.height}"
        if name.endswith(".txt"):
            with open(path, encoding="utf-8", errors="replace") as fh:
                return f"text, {sum(1 for _ in fh)} lines"
        if name.endswith(".pt"):
            return "torch checkpoint (torch.load(weights_only=True))"
    except (OSError, ValueError, tarfile.TarError) as exc:
        return f"unreadable: {exc}"
    return ""


def artifacts_section(stage_dirs: dict[str, str], root: str | None = None,
                      max_depth: int = 3) -> Section:
    """One row per stage and file pattern (shard numbers folded into NNNNN): path, files, bytes,
    and the schema read from the first such file."""
    s = Section("Artifacts", "artifacts")
    rows = []
    for stage, folder in stage_dirs.items():
        if not folder or not os.path.isdir(folder):
            continue
        groups: dict[str, list[str]] = {}
        base_depth = folder.rstrip(os.sep).count(os.sep)
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if dirpath.count(os.sep) - base_depth >= max_depth:
                dirnames[:] = []
            for f in sorted(filenames):
                if f.startswith(".") or ".tmp" in f:
                    continue
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, root) if root else full
                groups.setdefault(_PATTERN.sub(lambda m: "N" * len(m.group()), rel), []).append(full)
        for pattern, files in sorted(groups.items()):
            size = sum(os.path.getsize(f) for f in files)
            rows.append([stage, f"`{pattern}`", len(files), size, _describe(files[0])])
    if not rows:
        return s.note("no stage outputs found")
    return s.table(["stage", "path", "files", "bytes", "schema / content"], rows)


# --- all together ----------------------------------------------------------------------------------

def build_report(out_dir: str, stages: dict[str, str] | None = None, summary: dict | None = None,
                 zeroshot: dict | str | None = None, title: str = "wit demo report",
                 cap: float | None = None, extra_sections: list[Section] | None = None) -> tuple[str, str]:
    """Write ``out_dir/report.md`` (figures in ``out_dir/report_files/``) and a self-contained
    ``out_dir/report.html``. ``stages`` maps stage names (:data:`STAGES`) to their output folders;
    ``zeroshot`` is the results dict or a folder/file holding ``zeroshot.json``; ``cap`` overrides
    the per-query cap read from the collect stats. Returns the two paths."""
    stages = dict(stages or {})
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise WitError(f"report: unknown stage name(s) {sorted(unknown)}; use {', '.join(STAGES)}")
    report = Report(title)
    report.sections.append(summary_section(summary))
    report.sections.append(queries_section(stages.get("queries")))
    report.sections.append(balance_section(stages.get("collect"), cap=cap))
    report.sections.append(download_section(stages.get("download")))
    report.sections.append(dedup_section(stages.get("dedup"), stages.get("download")))
    report.sections.append(shards_section(stages.get("shards")))
    report.sections.append(training_section(stages.get("train")))
    report.sections.append(zeroshot_section(zeroshot if zeroshot is not None else stages.get("eval")))
    report.sections.extend(extra_sections or [])
    report.sections.append(artifacts_section(stages, root=out_dir))
    files_dir = os.path.join(out_dir, "report_files")
    for section in report.sections:
        for block in section.blocks:
            if block[0] == "figure":
                with atomic_open(os.path.join(files_dir, block[1]), "wb") as fh:
                    fh.write(block[2])
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    with atomic_open(md_path, "w") as fh:
        fh.write(report.to_markdown("report_files"))
    with atomic_open(html_path, "w") as fh:
        fh.write(report.to_html())
    return md_path, html_path
