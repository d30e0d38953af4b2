"""The query list's configuration, inputs, order, trim rule, stats and plot (the driver that runs
the Beam pipeline is ``pipelines/queries.py``).

Output order and the trim rule (also in docs/queries.md): every query has a *rank key*

1. its first part in the order ``wordnet``, ``unigram``, ``bigram``, ``title`` (CLIP adds all
   WordNet synsets, and its base list is the Wikipedia words; bigrams and titles augment it);
2. within that part, the part's statistic, largest first: synsets per head name, unigram count,
   bigram PMI (then bigram count), title views;
3. the query string (Unicode code point order) to break ties.

Rows are written sorted by this key (``id`` = row number). When the union of the parts is larger
than ``--target-size``, the list is cut after ``target_size`` rows, which drops the lowest-ranked
queries of the last parts first; when it is smaller, nothing is invented and ``stats.json`` says by
how much the list falls short.

Part sizes: the bigram and title parts are selected by size as well as by threshold. Of the
candidates that pass the thresholds, ``bigram_count`` bigrams are kept by rank (PMI rounded to
:data:`PMI_DECIMALS` decimals, largest first; then count, largest first; then the bigram string in
code point order) and ``title_count`` titles (views, largest first; then the title string). The
defaults are MetaCLIP's part sizes (:data:`METACLIP_SIZES`); when fewer candidates pass, all are
kept and ``stats.json``'s ``selection`` says so.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field

from wit_builder.core import (WitError, atomic_open, atomic_write_json, atomic_write_parquet, file_info, glob_files,
                              is_local, match_paths, open_read, remove)
from wit_builder.schemas import QUERIES_SCHEMA

__all__ = ["PART_ORDER", "QueryParams", "BuildConfig", "rank_key", "order_and_trim", "to_table",
           "collect_inputs", "METACLIP_SIZES", "bigram_selection_key", "title_selection_key"]

PART_ORDER = ("wordnet", "unigram", "bigram", "title")
OUTPUTS = ("queries.parquet", "queries.txt", "stats.json", "queries.png")
TRIM_RULE = ("rows sorted by (first part in the order wordnet, unigram, bigram, title; that part's "
             "statistic descending: synsets, unigram count, bigram PMI then count, title views; "
             "query string), cut after target_size rows")
# MetaCLIP's part sizes (Xu et al. 2023, "Demystifying CLIP Data"): the sizes the defaults
# of --bigram-count and --title-count reproduce; the unigram part is chosen by its threshold (>= 100)
METACLIP_SIZES = {"wordnet": 86_654, "unigram": 251_465, "bigram": 100_646, "title": 61_235}
# PMIs are compared rounded to this many decimals, so that PMIs equal in exact arithmetic (for
# example n12, n1, n2 = 2, 4, 4 and 1, 2, 4) tie however floating point rounds their logarithms
PMI_DECIMALS = 9
SELECTION_TIE_BREAK = {
    "bigram": f"PMI (rounded to {PMI_DECIMALS} decimals) descending, then count descending, then the "
              "bigram string in code point order",
    "title": "views descending, then the title string in code point order"}


def bigram_selection_key(item) -> tuple:
    """Sort key of a bigram candidate ``(bigram, ("bigram", [n12, pmi]))`` for ``--bigram-count``:
    smallest first = kept first (a total order: the string breaks every tie)."""
    bigram, (_, (n12, score)) = item
    return -round(score, PMI_DECIMALS), -n12, bigram


def title_selection_key(item) -> tuple:
    """Sort key of a title candidate ``(title, ("title", views))`` for ``--title-count``."""
    title, (_, views) = item
    return -views, title


@dataclass
class QueryParams:
    """Thresholds and switches of one build (all are ``wit queries`` options)."""
    unigram_min_count: int = 100
    bigram_min_count: int = 100
    bigram_min_pmi: float | None = None
    bigram_count: int | None = METACLIP_SIZES["bigram"]
    title_min_views: int = 70
    title_count: int | None = METACLIP_SIZES["title"]
    title_min_hourly_views: int = 50
    pageview_domains: tuple[str, ...] = ("en", "en.m")
    parts: tuple[str, ...] = ("wordnet", "unigram", "bigram", "title")
    unit_bytes: int = 16 << 20
    use_index: bool = True

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class BuildConfig:
    """Everything that determines one query list: inputs, output folder, size, WordNet, thresholds."""
    dumps: list[str]
    out: str
    pageviews: list[str] = field(default_factory=list)
    target_size: int = 500_000
    wordnet_dir: str | None = None
    wordnet_download: bool = True
    params: QueryParams = field(default_factory=QueryParams)

    def validate(self) -> None:
        p = self.params
        unknown = set(p.parts) - set(PART_ORDER)
        if unknown or not p.parts:
            raise WitError(f"--parts must name some of {', '.join(PART_ORDER)} (got {', '.join(p.parts) or 'none'})")
        if self.target_size < 1:
            raise WitError("--target-size must be at least 1")
        for name in ("unigram_min_count", "bigram_min_count", "title_min_views", "title_min_hourly_views"):
            if getattr(p, name) < 1:
                raise WitError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("bigram_count", "title_count"):
            if getattr(p, name) is not None and getattr(p, name) < 1:
                raise WitError(f"--{name.replace('_', '-')} must be at least 1, or 'all' (got {getattr(p, name)})")
        if p.unit_bytes <= 0:
            raise WitError("--unit-mb must be positive")


# ---------------------------------------------------------------- ordering

def _primary(part: str, stat) -> tuple[float, float]:
    if part == "bigram":
        count, score = stat
        return float(score), float(count)
    return float(stat), 0.0


def rank_key(query: str, parts: dict) -> tuple:
    """Sort key of a merged query (see the module docstring)."""
    for priority, part in enumerate(PART_ORDER):
        if part in parts:
            a, b = _primary(part, parts[part])
            return priority, -a, -b, query
    raise ValueError(f"query {query!r} has no known part: {parts}")


def order_and_trim(rows: list[dict], target_size: int) -> tuple[list[dict], int]:
    """Rows ``{"query", "parts"}`` sorted by :func:`rank_key` and cut to ``target_size``; returns
    ``(kept rows, number trimmed)``."""
    ordered = sorted(rows, key=lambda r: rank_key(r["query"], r["parts"]))
    trimmed = max(0, len(ordered) - target_size)
    return ordered[:target_size], trimmed


def to_table(rows: list[dict]):
    """The queries.parquet table (schema: docs/schemas.md)."""
    import pyarrow as pa
    cols: dict[str, list] = {k: [] for k in ("id", "query", "sources", "unigram_count", "bigram_count",
                                             "bigram_pmi", "title_views", "wordnet_synsets")}
    for i, row in enumerate(rows):
        parts = row["parts"]
        bigram = parts.get("bigram")
        cols["id"].append(i)
        cols["query"].append(row["query"])
        cols["sources"].append([p for p in PART_ORDER if p in parts])
        cols["unigram_count"].append(parts.get("unigram"))
        cols["bigram_count"].append(bigram[0] if bigram else None)
        cols["bigram_pmi"].append(float(bigram[1]) if bigram else None)
        cols["title_views"].append(parts.get("title"))
        cols["wordnet_synsets"].append(parts.get("wordnet"))
    return pa.table(cols, schema=QUERIES_SCHEMA)


# ---------------------------------------------------------------- inputs

def _is_index(path: str) -> bool:
    return os.path.basename(path).endswith(("-index.txt.bz2", "-index.txt"))


def collect_inputs(dump_patterns: list[str], use_index: bool = True) -> list[tuple[str, str | None]]:
    """Dump files (globs/folders expanded) paired with their multistream index (or None). Index
    files among the inputs are paired by name, not read as dumps. Fails on a missing or empty
    input, before any pipeline starts."""
    from queries.wikidump import check_dump, file_size, index_path_for
    paths = match_paths(dump_patterns, "dump")
    given_indexes = {p for p in paths if _is_index(p)}
    dumps = [p for p in paths if not _is_index(p)]
    if not dumps:
        raise WitError(f"no dump files among {', '.join(dump_patterns)} (only multistream indexes)")
    pairs = []
    for dump in dumps:
        check_dump(dump)
        index = None
        if use_index and dump.endswith("multistream.xml.bz2"):
            name = dump[: -len(".xml.bz2")] + "-index.txt.bz2"
            index = name if name in given_indexes else index_path_for(dump)
            if index is not None and file_size(index) == 0:
                raise WitError(f"multistream index {index} is empty (0 bytes)")
        pairs.append((dump, index))
    return pairs


def _sizes(paths) -> list[dict]:
    from queries.wikidump import file_size
    return [{"path": p, "bytes": file_size(p)} for p in paths]


# ---------------------------------------------------------------- work files

def read_results(work_dir: str, name: str) -> list:
    """The JSON lines of ``work_dir/name-*`` (the pipeline's result files), in file order."""
    out = []
    for path in glob_files(f"{work_dir}/{name}-*"):
        with open_read(path) as fh:
            for line in fh:
                if line.strip():
                    out.append(json.loads(line))
    return out


def remove_tree(path: str) -> None:
    if is_local(path):
        import shutil
        shutil.rmtree(path, ignore_errors=True)
        return
    remove(glob_files(f"{path}/**"))


# ---------------------------------------------------------------- stats and plot

def _pageview_file_skip(name: str) -> bool:
    """A ``pageviews.*`` counter that counts whole files (damaged or empty), not lines."""
    return name.endswith(("_gzip", "_bz2")) or name in ("empty_file", "read_error")


def _nest(counters: dict) -> dict:
    def pick(prefix):
        return {k[len(prefix):]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}
    pages = pick("page.")
    stream = pick("stream.")
    pv = pick("pageviews.")
    return {
        "corpus": {"pages_read": pages.pop("read", 0), "articles": pages.pop("article", 0),
                   **pick("corpus."), "work_units": counters.get("dump.work_units", 0)},
        "skipped": {
            "pages": pages,
            "bz2_streams": stream,
            "pageview_lines": {k[len("line_"):]: v for k, v in pv.items() if k.startswith("line_")},
            "pageview_files": {k: v for k, v in pv.items() if _pageview_file_skip(k)},
            "queries": {"invalid": counters.get("query.invalid", 0)},
        },
        "repaired": {"pages_invalid_utf8": counters.get("repaired.invalid_utf8", 0)},
        "pageviews": {k: v for k, v in pv.items() if not k.startswith("line_") and not _pageview_file_skip(k)},
    }


def plot(path: str, part_sizes: dict, output_sizes: dict, histogram: dict[int, int],
         unigram_min_count: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(PART_ORDER)
    xs = range(len(names))
    for shift, sizes, label in ((-0.2, part_sizes, "part size"), (0.2, output_sizes, "in output")):
        bars = ax1.bar([x + shift for x in xs], [max(sizes.get(n, 0), 0.8) for n in names], 0.4, label=label)
        ax1.bar_label(bars, labels=[f"{sizes.get(n, 0):,}" for n in names], fontsize=7)
    ax1.set_xticks(list(xs), names)
    ax1.set_yscale("log")
    ax1.set_ylim(0.7, max([*part_sizes.values(), 1]) * 4)
    ax1.set_ylabel("queries (log scale)")
    ax1.set_title("Size per part")
    ax1.legend()
    if histogram:
        bins = sorted(histogram)
        ax2.bar([2 ** b for b in bins], [histogram[b] for b in bins], width=[2 ** b for b in bins],
                align="edge", edgecolor="black", linewidth=0.3)
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.axvline(unigram_min_count, color="red", linestyle="--", label=f"min count {unigram_min_count}")
        ax2.legend()
    ax2.set_xlabel("occurrences in article text (log2 bins)")
    ax2.set_ylabel("distinct words")
    ax2.set_title("Unigram counts")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the build

def _file_id(path: str | None):
    """``[path, bytes, modified]`` of a file: a rebuilt input with the same name is a new input."""
    if path is None:
        return None
    size, mtime = file_info(path)
    return [path, size, mtime]


def _signature(cfg: BuildConfig, dumps, pageviews) -> dict:
    return {"dumps": [[_file_id(d), _file_id(i)] for d, i in dumps],
            "pageviews": [_file_id(p) for p in pageviews], "target_size": cfg.target_size,
            "params": cfg.params.to_json(), "wordnet_dir": cfg.wordnet_dir}


def describe(stats: dict) -> str:
    o = stats["output"]
    parts = ", ".join(f"{p} {v['size']:,}" for p, v in stats["parts"].items() if v["enabled"])
    msg = f"{o['queries']:,} queries ({parts}; union {o['union_size']:,})"
    if o["trimmed"]:
        msg += f", trimmed {o['trimmed']:,} to --target-size {o['target_size']:,}"
    elif o["short_of_target"]:
        msg += f", {o['short_of_target']:,} short of --target-size {o['target_size']:,}"
    for part, sel in (stats.get("selection") or {}).items():
        if sel.get("all_taken"):
            msg += (f"; only {sel['candidates']:,} {part} candidates passed the thresholds, fewer than "
                    f"--{part}-count {sel['count']:,}: all taken")
    return msg


def _selection(params: QueryParams, counters: dict) -> dict:
    """How the bigram and title parts were cut to their counts (``stats.json``'s ``selection``)."""
    out = {}
    for part, passed in (("bigram", "passed.bigram_min_pmi"), ("title", "title.in_dump")):
        if part not in params.parts:
            continue
        count, candidates = getattr(params, f"{part}_count"), counters.get(passed, 0)
        selected = candidates if count is None else min(count, candidates)
        out[part] = {"count": count, "candidates": candidates, "selected": selected,
                     "all_taken": count is not None and candidates < count,
                     "tie_break": SELECTION_TIE_BREAK[part]}
    return out


# ---------------------------------------------------------------- the build's steps (pipelines/queries.py runs them)

def pageview_inputs(cfg: BuildConfig) -> list[str]:
    """The hourly pageview files, when the title part is built."""
    if "title" not in cfg.params.parts:
        return []
    if not cfg.pageviews:
        raise WitError("the title part needs hourly pageview files (--pageviews), or leave 'title' out of --parts")
    return match_paths(cfg.pageviews, "pageview")


def wordnet_items(cfg: BuildConfig) -> tuple[list, dict]:
    """The WordNet part as sorted ``(query, synsets)`` pairs and a description of its source
    (computed by the launcher in about a second: workers need no WordNet)."""
    if "wordnet" not in cfg.params.parts:
        return [], {}
    from queries import wordnet as wn
    root = wn.wordnet_root(cfg.wordnet_dir, allow_download=cfg.wordnet_download)
    part = wn.wordnet_part(root)
    info = {"root": str(root), "version": wn.wordnet_version(root), "synsets": sum(part.values()),
            "head_names": len(part) - sum(1 for s in wn.EXTRA_STRINGS if part.get(s) == 0),
            "extra_strings": len(wn.EXTRA_STRINGS)}
    return sorted(part.items()), info


@dataclass
class Candidates:
    """What the pipeline found: query rows (``{"query", "parts"}``) and its counters."""
    merged: list
    counters: dict

    @property
    def histogram(self) -> dict[int, int]:
        return {int(k[5:]): v for k, v in self.counters.items() if k.startswith("hist.")}


def read_candidates(work_dir: str, dumps: list[str]) -> Candidates:
    """The pipeline's result files; a corpus without articles is an error."""
    merged, counters = [], {}
    for kind, value in read_results(work_dir, "result"):
        if kind == "query":
            merged.append(value)
        else:
            counters[value[0]] = value[1]
    if not counters.get("page.article"):
        raise WitError(f"no articles (namespace 0, not redirects) in {', '.join(dumps)} "
                       f"({counters.get('page.read', 0)} pages read); nothing written")
    return Candidates(merged, counters)


def build_stats(cfg: BuildConfig, cand: Candidates, rows: list[dict], trimmed: int, inputs: dict, run: dict,
                signature: dict) -> dict:
    """The content of stats.json (docs/queries.md lists its keys)."""
    params, counters = cfg.params, cand.counters
    part_sizes = Counter(p for r in cand.merged for p in r["parts"])
    output_sizes = Counter(p for r in rows for p in r["parts"])
    stats = {
        "output": {"queries": len(rows), "target_size": cfg.target_size, "union_size": len(cand.merged),
                   "trimmed": trimmed, "short_of_target": max(0, cfg.target_size - len(cand.merged)),
                   "trim_rule": TRIM_RULE},
        "parts": {p: {"size": part_sizes.get(p, 0), "in_output": output_sizes.get(p, 0),
                      "enabled": p in params.parts} for p in PART_ORDER},
        "thresholds": {"unigram_min_count": params.unigram_min_count,
                       "bigram_min_count": params.bigram_min_count,
                       "bigram_min_pmi": params.bigram_min_pmi,
                       "bigram_count": params.bigram_count,
                       "title_min_views": params.title_min_views,
                       "title_count": params.title_count,
                       "title_min_hourly_views": params.title_min_hourly_views,
                       "pageview_domains": list(params.pageview_domains)},
        "passed": {"unigram_min_count": counters.get("passed.unigram_min_count", 0),
                   "bigram_min_count": counters.get("passed.bigram_min_count", 0),
                   "bigram_min_count_and_min_pmi": counters.get("passed.bigram_min_pmi", 0),
                   "title_hours_min_hourly_views": counters.get("pageviews.title_hours_kept", 0),
                   "title_min_views": counters.get("title.passed_min_views", 0),
                   "title_min_views_and_article": counters.get("title.in_dump", 0)},
        "selection": _selection(params, counters),
        **_nest(counters),
        "inputs": inputs,
        "run": run,
        "counters": {k: v for k, v in sorted(counters.items()) if not k.startswith("hist.")},
        "unigram_count_histogram": {f"{2 ** b}-{2 ** (b + 1) - 1}": n for b, n in sorted(cand.histogram.items())},
        "signature": signature,
    }
    if "corpus.bigram_pmi_max" in counters and isinstance(counters["corpus.bigram_pmi_max"], float):
        stats["corpus"]["bigram_pmi_max"] = round(counters["corpus.bigram_pmi_max"], 4)
    return stats


def write_outputs(cfg: BuildConfig, cand: Candidates, rows: list[dict], stats: dict) -> None:
    """queries.parquet, queries.txt, queries.png, then stats.json: its presence with a matching
    signature marks a complete build."""
    out = cfg.out.rstrip("/")
    if is_local(out):
        os.makedirs(out, exist_ok=True)
    atomic_write_parquet(f"{out}/queries.parquet", to_table(rows))
    with atomic_open(f"{out}/queries.txt", "w") as fh:
        for r in rows:
            fh.write(r["query"] + "\n")
    part_sizes = {p: v["size"] for p, v in stats["parts"].items()}
    output_sizes = {p: v["in_output"] for p, v in stats["parts"].items()}
    plot(f"{out}/queries.png", part_sizes, output_sizes, cand.histogram, cfg.params.unigram_min_count)
    atomic_write_json(f"{out}/stats.json", stats)
