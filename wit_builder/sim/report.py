"""The demo's report: ``DIR/report.md`` and a self-contained ``DIR/report.html`` from stage outputs.

It reads only the files that ``docs/schemas.md`` defines (plus a small per-stage summary dict), so
it works on any run that follows the contract, and it skips, with a note, whatever is missing:

=========================  =========================================================================
section                    reads
=========================  =========================================================================
stage summary              ``summary``: ``{stage: {"in", "out", "dropped": {reason: n}, "seconds"}}``
query list                 ``Q/queries.parquet`` (``sources``, ``unigram_count``), ``Q/stats.json``
balancing                  ``OUT/counts.parquet``, ``OUT/balanced/*.parquet`` (``query_ids``),
                           ``OUT/stats.json`` (the per-query cap)
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
(``queries_section(path)``, ...) that return a :class:`Section`.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wit_builder.core import WitError, atomic_open, read_json_or_none

__all__ = ["build_report", "confusion_matrix", "Section", "Report", "STAGES", "queries_section",
           "balance_section", "download_section", "dedup_section", "shards_section",
           "training_section", "zeroshot_section", "artifacts_section", "summary_section"]

# stage name -> what docs/schemas.md calls its output folder
STAGES = ("queries", "collect", "download", "dedup", "shards", "train", "eval")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


# --- document model --------------------------------------------------------------------------------

@dataclass
class Section:
    """A titled list of blocks: ("p", text), ("table", header, rows), ("figure", name, png, caption),
    ("note", text)."""

    title: str
    anchor: str
    blocks: list = field(default_factory=list)

    def p(self, text: str) -> "Section":
        self.blocks.append(("p", text))
        return self

    def note(self, text: str) -> "Section":
        self.blocks.append(("note", text))
        return self

    def table(self, header: list, rows: list[list]) -> "Section":
        self.blocks.append(("table", [str(h) for h in header], [[_cell(c) for c in r] for r in rows]))
        return self

    def figure(self, name: str, png: bytes, caption: str) -> "Section":
        self.blocks.append(("figure", name, png, caption))
        return self


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def to_markdown(self, files_dir: str) -> str:
        out = [f"# {self.title}", ""]
        out += [f"- [{s.title}](#{s.anchor})" for s in self.sections] + [""]
        for s in self.sections:
            out += [f"<a id=\"{s.anchor}\"></a>", f"## {s.title}", ""]
            for block in s.blocks:
                kind = block[0]
                if kind == "p":
                    out += [block[1], ""]
                elif kind == "note":
                    out += [f"> {block[1]}", ""]
                elif kind == "table":
                    _, header, rows = block
                    esc = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
                    out.append("| " + " | ".join(esc(h) for h in header) + " |")
                    out.append("|" + "---|" * len(header))
                    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
                    out.append("")
                elif kind == "figure":
                    _, name, _, caption = block
                    out += [f"![{caption}]({files_dir}/{name})", "", f"*{caption}*", ""]
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        e = html.escape
        parts = ["<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
                 f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
                 f"<h1>{e(self.title)}</h1>\n<nav><ul>"]
        parts += [f"<li><a href=\"#{s.anchor}\">{e(s.title)}</a></li>" for s in self.sections]
        parts.append("</ul></nav>\n")
        for s in self.sections:
            parts.append(f"<section id=\"{s.anchor}\">\n<h2>{e(s.title)}</h2>\n")
            for block in s.blocks:
                kind = block[0]
                if kind == "p":
                    parts.append(f"<p>{_inline_html(block[1])}</p>\n")
                elif kind == "note":
                    parts.append(f"<p class=\"note\">{_inline_html(block[1])}</p>\n")
                elif kind == "table":
                    _, header, rows = block
                    parts.append("<table>\n<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
                                 + "</tr></thead>\n<tbody>\n")
                    parts += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>\n"
                              for r in rows]
                    parts.append("</tbody>\n</table>\n")
                elif kind == "figure":
                    _, name, png, caption = block
                    data = base64.b64encode(png).decode("ascii")
                    parts.append(f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{data}\">"
                                 f"<figcaption>{e(caption)}</figcaption></figure>\n")
            parts.append("</section>\n")
        parts.append("</body>\n</html>\n")
        return "".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
        "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}"
        "figcaption{color:#555;font-size:.9em}.note{color:#8a5300}code{background:#f3f3f3}")


def _inline_html(text: str) -> str:
    """Escape, then render `code` spans (the only inline Markdown the report uses)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


# --- helpers ---------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _parquet_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.endswith(".parquet") and not f.startswith("."))


def _read_parquets(files: list[str], columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq
    tables = []
    for f in files:
        names = set(pq.read_schema(f).names)
        cols = [c for c in columns if c in names]
        tables.append(pq.read_table(f, columns=cols))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


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
                     ", ".join(f"{k}: {_cell(v)}" for k, v in dropped.items()) or "-",
                     None if info.get("seconds") is None else round(float(info["seconds"]), 1),
                     "skipped (done)" if info.get("skipped") else ""])
    s.table(["stage", "records in", "records out", "dropped by reason", "seconds", "note"], rows)
    total = sum(float(i.get("seconds") or 0) for i in summary.values())
    return s.p(f"Total time: {total:.0f} s.")


def queries_section(q_dir: str | None) -> Section:
    s = Section("Query list", "queries")
    path = os.path.join(q_dir or "", "queries.parquet")
    if not q_dir or not os.path.exists(path):
        return s.note("`wit queries` output not found")
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=["query", "sources", "unigram_count"])
    sources = t.column("sources").to_pylist()
    parts = Counter(src for row in sources for src in (row or []))
    order = [p for p in ("wordnet", "unigram", "bigram", "title") if p in parts]
    s.p(f"{t.num_rows:,} queries. A query can come from several parts.")
    queries = t.column("query").to_pylist()
    examples = {p: [q for q, src in zip(queries, sources) if p in (src or [])][:6] for p in order}
    s.table(["part", "queries", "examples"], [[p, parts[p], ", ".join(examples[p])] for p in order])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].bar(order, [parts[p] for p in order], color="#4c72b0")
    axes[0].set_title("queries per part")
    counts = np.array([c for c in t.column("unigram_count").to_pylist() if c], dtype=float)
    if len(counts):
        bins = np.logspace(np.log10(counts.min()), np.log10(counts.max() + 1), 30)
        axes[1].hist(counts, bins=bins, color="#55a868")
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
    axes[1].set_title("unigram counts (in the corpus)")
    axes[1].set_xlabel("count")
    s.figure("queries.png", _png(fig), "Query parts and the distribution of unigram counts")
    stats = read_json_or_none(os.path.join(q_dir, "stats.json"))
    if isinstance(stats, dict) and isinstance(stats.get("thresholds"), dict):
        s.table(["threshold", "value"], [[k, v] for k, v in stats["thresholds"].items()])
    return s


def _find_cap(stats) -> float | None:
    if not isinstance(stats, dict):
        return None
    for key, value in stats.items():
        if "cap" in key.lower() and isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dict):
            found = _find_cap(value)
            if found is not None:
                return found
    return None


def balance_section(collect_dir: str | None, cap: float | None = None) -> Section:
    s = Section("Matching and balancing", "balance")
    counts_path = os.path.join(collect_dir or "", "counts.parquet")
    if not collect_dir or not os.path.exists(counts_path):
        return s.note("`wit collect` output (counts.parquet) not found")
    import pyarrow.parquet as pq
    counts = pq.read_table(counts_path, columns=["query_id", "query", "count"]).to_pydict()
    before = dict(zip(counts["query_id"], counts["count"]))
    names = dict(zip(counts["query_id"], counts["query"]))
    after: Counter = Counter()
    balanced = _read_parquets(_parquet_files(os.path.join(collect_dir, "balanced")), ["query_ids"])
    kept_pairs = 0
    if balanced is not None:
        for ids in balanced.column("query_ids").to_pylist():
            after.update(ids or [])
        kept_pairs = balanced.num_rows
    stats = read_json_or_none(os.path.join(collect_dir, "stats.json"))
    cap = cap if cap is not None else _find_cap(stats)
    qids = sorted(before, key=lambda q: (-before[q], q))
    b = np.array([before[q] for q in qids], float)
    a = np.array([after.get(q, 0) for q in qids], float)
    s.p(f"{len(qids):,} queries matched at least one pair; {sum(b):,.0f} query matches before "
        f"balancing; {kept_pairs:,} pairs kept" + (f" with a per-query cap of {cap:,.0f}." if cap else "."))
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rank = np.arange(1, len(b) + 1)
    axes[0].loglog(rank, b, ".", label="before balancing", color="#c44e52")
    axes[0].loglog(rank, np.maximum(a, 0.8), ".", label="after", color="#4c72b0")
    if cap:
        axes[0].axhline(cap, ls="--", color="k", lw=1, label=f"cap {cap:,.0f}")
    axes[0].set_xlabel("query rank")
    axes[0].set_ylabel("pairs containing the query")
    axes[0].legend()
    axes[1].loglog(b, np.maximum(a, 0.8), ".", color="#4c72b0")
    lim = [0.8, max(2.0, b.max() * 1.3)]
    axes[1].plot(lim, lim, ":", color="grey", label="unchanged")
    if cap:
        axes[1].axhline(cap, ls="--", color="k", lw=1, label="cap")
    for q in qids[:3]:
        axes[1].annotate(names[q], (before[q], max(after.get(q, 0), 0.8)), fontsize=8)
    axes[1].set_xlabel("count before")
    axes[1].set_ylabel("count after")
    axes[1].legend()
    s.figure("balance.png", _png(fig), "Per-query counts before and after balancing (log-log)")
    s.table(["query", "before", "after", "keep_prob"],
            [[names[q], before[q], after.get(q, 0), min(1.0, cap / before[q]) if cap else None]
             for q in qids[:10]])
    return s


def download_section(images_dir: str | None) -> Section:
    s = Section("Download", "download")
    files = [f for f in _parquet_files(images_dir or "") if re.fullmatch(r"\d+\.parquet", os.path.basename(f))]
    if not files:
        return s.note("`wit download` output not found")
    t = _read_parquets(files, ["status", "error_kind"])
    status = Counter(t.column("status").to_pylist())
    kinds = Counter(k for k, st in zip(t.column("error_kind").to_pylist() if "error_kind" in t.column_names
                                       else [None] * t.num_rows, t.column("status").to_pylist())
                    if st != "success")
    s.table(["status", "rows"], [[k, v] for k, v in status.most_common()])
    if kinds:
        s.table(["error kind", "rows"], [[k or "(none)", v] for k, v in kinds.most_common()])
    return s


def _shard_path(shard: str, images_dir: str | None) -> str | None:
    if shard and os.path.exists(shard):
        return shard
    if images_dir and shard:
        cand = os.path.join(images_dir, os.path.basename(shard))
        if not cand.endswith(".tar"):
            cand += ".tar"
        if os.path.exists(cand):
            return cand
    return None


def _load_members(tar_path: str, keys: set[str]) -> dict[str, dict]:
    """``{key: {"image": bytes, "txt": str}}`` for the wanted keys of one tar."""
    found: dict[str, dict] = {}
    with tarfile.open(tar_path) as tf:
        for member in tf:
            stem, _, ext = member.name.rpartition(".")
            key = os.path.basename(stem)
            if key not in keys or not member.isfile():
                continue
            data = tf.extractfile(member).read()
            if ext.lower() in _IMAGE_EXTS:
                found.setdefault(key, {})["image"] = data
            elif ext == "txt":
                found.setdefault(key, {})["txt"] = data.decode("utf-8", "replace")
    return found


def _thumb(data: bytes | None, size: int, colour):
    from PIL import Image, ImageDraw
    tile = Image.new("RGB", (size, size), colour)
    inner = size - 8
    try:
        img = Image.open(io.BytesIO(data)).convert("RGB") if data else None
    except OSError:
        img = None
    if img is None:
        ImageDraw.Draw(tile).line((4, 4, size - 4, size - 4), fill=(90, 90, 90), width=2)
        return tile
    img.thumbnail((inner, inner))
    tile.paste(img, (4 + (inner - img.width) // 2, 4 + (inner - img.height) // 2))
    return tile


def dedup_section(dedup_dir: str | None, images_dir: str | None = None, clusters: int = 6,
                  per_cluster: int = 6, thumb: int = 96) -> Section:
    s = Section("Near-duplicate clusters", "dedup")
    path = os.path.join(dedup_dir or "", "decisions.parquet")
    if not dedup_dir or not os.path.exists(path):
        return s.note("`wit dedup run` output (decisions.parquet) not found")
    import pyarrow.parquet as pq
    d = pq.read_table(path).to_pydict()
    n = len(d["key"])
    kept = sum(bool(k) for k in d["kept"])
    undecodable = sum(1 for c in d["cluster_id"] if c == -1)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(d["cluster_id"]):
        if c is not None and c >= 0 and (d["cluster_size"][i] or 0) >= 2:
            members.setdefault(int(c), []).append(i)
    s.p(f"{n:,} images: {kept:,} kept, {n - kept:,} dropped ({undecodable:,} undecodable); "
        f"{len(members):,} clusters with 2 or more images.")
    if not members:
        return s
    chosen = sorted(members, key=lambda c: (-len(members[c]), c))[:clusters]
    wanted: dict[str, set[str]] = {}
    for c in chosen:
        for i in members[c][:per_cluster]:
            wanted.setdefault(d["shard"][i], set()).add(d["key"][i])
    content: dict[tuple[str, str], dict] = {}
    missing = 0
    for shard, keys in wanted.items():
        tar = _shard_path(shard, images_dir)
        if tar is None:
            missing += len(keys)
            continue
        for key, v in _load_members(tar, keys).items():
            content[(shard, key)] = v
    from PIL import Image, ImageDraw
    width = min(per_cluster, max(len(members[c]) for c in chosen))
    strip = Image.new("RGB", (width * thumb + 150, len(chosen) * thumb), "white")
    draw = ImageDraw.Draw(strip)
    rows = []
    for r, c in enumerate(chosen):
        draw.text((6, r * thumb + thumb // 2 - 12), f"cluster {c}\n{len(members[c])} images",
                  fill=(0, 0, 0))
        for j, i in enumerate(members[c][:per_cluster]):
            item = content.get((d["shard"][i], d["key"][i]), {})
            colour = (46, 160, 67) if d["kept"][i] else (210, 50, 50)
            strip.paste(_thumb(item.get("image"), thumb, colour), (150 + j * thumb, r * thumb))
            sim = d.get("nearest_similarity", [None] * n)[i]
            rows.append([c, d["key"][i], "kept" if d["kept"][i] else "dropped",
                         None if sim is None else float(sim), item.get("txt", "")])
    buf = io.BytesIO()
    strip.save(buf, "PNG")
    s.figure("duplicates.png", buf.getvalue(),
             "Largest duplicate clusters (green border: kept, red: dropped)")
    if missing:
        s.note(f"{missing} thumbnails missing: their image shards were not found")
    s.table(["cluster", "key", "decision", "nearest similarity", "caption"], rows)
    return s


def shards_section(shards_dir: str | None) -> Section:
    s = Section("Shards", "shards")
    manifest = read_json_or_none(os.path.join(shards_dir or "", "manifest.json"))
    sizes = read_json_or_none(os.path.join(shards_dir or "", "sizes.json"))
    if not shards_dir or (manifest is None and sizes is None):
        return s.note("`wit shards` output not found")
    if isinstance(sizes, dict):
        s.p(f"{len(sizes)} shards, {sum(int(v) for v in sizes.values()):,} samples.")
        s.table(["shard", "samples"], [[k, v] for k, v in sorted(sizes.items())][:20])
    if isinstance(manifest, dict):
        totals = manifest.get("totals")
        if isinstance(totals, dict):
            s.table(["total", "value"], [[k, v] for k, v in totals.items()])
    return s


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
    plt = _plt()
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
    s.figure("training.png", _png(fig), "Training curves from RUN/log.jsonl")
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
    plt = _plt()
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
        s.figure(f"confusion_{re.sub(r'[^A-Za-z0-9_-]', '_', name)}.png", _png(fig),
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
