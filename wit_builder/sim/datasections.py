"""The demo report's sections for the dataset stages, each read from the files ``docs/schemas.md``
defines: the query list (``Q/``), matching and balancing (``OUT/``), the download (``IMAGES/``),
near-duplicate clusters with thumbnails (``DEDUP/`` + the image shards) and the final shards.
Each returns a :class:`~wit_builder.sim.reportdoc.Section`, with a note when its input is missing.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from collections import Counter

import numpy as np

from wit_builder.balance import query_keep_prob
from wit_builder.core import read_json_or_none
from wit_builder.sim.reportdoc import Section, figure_png, pyplot

__all__ = ["queries_section", "balance_section", "download_section", "dedup_section",
           "shards_section"]

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


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
    plt = pyplot()
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
    s.figure("queries.png", figure_png(fig), "Query parts and the distribution of unigram counts")
    stats = read_json_or_none(os.path.join(q_dir, "stats.json"))
    if isinstance(stats, dict) and isinstance(stats.get("thresholds"), dict):
        s.table(["threshold", "value"], [[k, v] for k, v in stats["thresholds"].items()])
    return s


def _collect_cap(stats) -> float | None:
    """The per-query cap ``wit collect`` wrote at the top level of ``OUT/stats.json``."""
    cap = stats.get("per_query_cap") if isinstance(stats, dict) else None
    if isinstance(cap, (int, float)) and not isinstance(cap, bool):
        return float(cap)
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
    cap = cap if cap is not None else _collect_cap(stats)
    qids = sorted(before, key=lambda q: (-before[q], q))
    b = np.array([before[q] for q in qids], float)
    a = np.array([after.get(q, 0) for q in qids], float)
    s.p(f"{len(qids):,} queries matched at least one pair; {sum(b):,.0f} query matches before "
        f"balancing; {kept_pairs:,} pairs kept" + (f" with a per-query cap of {cap:,.0f}." if cap else "."))
    plt = pyplot()
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
    s.figure("balance.png", figure_png(fig), "Per-query counts before and after balancing (log-log)")
    s.table(["query", "before", "after", "keep_prob"],
            [[names[q], before[q], after.get(q, 0), float(query_keep_prob([before[q]], cap)[0]) if cap else None]
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


def _cluster_images(d: dict, shown: dict[int, list[int]], images_dir: str | None) -> tuple[dict, int]:
    """``({(shard, key): {"image", "txt"}}, number not found)`` for the decision rows ``shown``
    (row indices per cluster), read from their image shards."""
    wanted: dict[str, set[str]] = {}
    for rows in shown.values():
        for i in rows:
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
    return content, missing


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
    shown = {c: members[c][:per_cluster] for c in chosen}
    content, missing = _cluster_images(d, shown, images_dir)
    from PIL import Image, ImageDraw
    width = min(per_cluster, max(len(members[c]) for c in chosen))
    strip = Image.new("RGB", (width * thumb + 150, len(chosen) * thumb), "white")
    draw = ImageDraw.Draw(strip)
    rows = []
    for r, c in enumerate(chosen):
        draw.text((6, r * thumb + thumb // 2 - 12), f"cluster {c}\n{len(members[c])} images",
                  fill=(0, 0, 0))
        for j, i in enumerate(shown[c]):
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
