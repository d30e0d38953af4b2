"""Beam pipeline behind ``wit queries``: Wikipedia dumps + pageviews + WordNet -> query candidates.

Graph (each step a named transform)::

    dump specs ─ PlanWorkUnits ─ SpreadUnits ─ ReadArticles ─ CleanAndCount ─┬─ word tables ─ CountUnigrams ─ KeepUnigrams
                                                                              ├─ bigram tables ─ CountBigrams ─ BigramCandidates ─ ScoreBigrams ─ KeepBigrams
                                                                              └─ title ─┐
    pageview files ─ SpreadPageviews ─ HourlyViews ─ SumViews ─ MinViews ─ JoinTitles ─ TitleInDump
    WordNet part (computed by the launcher) ─ WordNetPart
    all parts ─ ValidQueries ─ Merge (GroupByKey on 64 hash buckets) ─ MergedRows ─┐
    counters of every step ─ SumStats ────────────────────────────────────────────┴─ WriteResults

Counting never groups word occurrences. ``CleanAndCount`` sums the words and bigrams of its
bundle's pages in memory and emits them as ``{term: n}`` tables, one per hash shard of the terms
(1024 shards); ``CountUnigrams``/``CountBigrams`` are ``CombinePerKey(SumCounts())`` on the shard
key, which Beam lifts into partial sums per bundle before the shuffle (combiner lifting) and
finishes per shard after it. The thresholds are then applied per shard, so only the terms that
pass them become Beam elements of their own. A multistream dump is read as many work units (byte ranges cut at
its index's stream offsets, see :mod:`queries.wikidump`), spread over workers by ``Reshuffle``.
PMI needs n(w1) and n(w2) for each bigram: ``ScoreBigrams`` joins them in with two
``CoGroupByKey`` steps (a side input of all word counts would not fit a worker at full scale).

Output: ``work_dir/result-*.jsonl``, read back by :func:`run`, the stage's driver: ``["query", {"query": q,
"parts": {part: statistic}}]`` per query and ``["stat", [name, value]]`` per counter (skips by
reason, threshold passes, corpus sizes, ``hist.B``: distinct words with count in [2^B, 2^(B+1))).
"""
from __future__ import annotations

import json
import math
import zlib
from collections import Counter
import datetime as dt
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue

from pipelines.beam_options import BeamOptions
from pipelines.beam_options import run_pipeline as run_beam
from queries.build import (OUTPUTS, PART_ORDER, TRIM_RULE, BuildConfig, QueryParams, _nest, _signature, _sizes,
                           collect_inputs, order_and_trim, plot, read_results, remove_tree, to_table)
from wit_builder.core import (WitError, atomic_open, atomic_write_json, atomic_write_parquet, finished_run,
                              is_local, match_paths)

STATS = "stats"


def _stat(name: str, value, how: str = "sum"):
    return pvalue.TaggedOutput(STATS, (name, (how, value)))


class StatsFn(beam.CombineFn):
    """Combines ``(how, value)`` pairs: ``sum`` adds, ``max`` keeps the largest."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, item])

    def merge_accumulators(self, accs):
        out = None
        for acc in accs:
            if acc is None:
                continue
            if out is None:
                out = acc
            elif acc[0] == "max":
                out = ("max", max(out[1], acc[1]))
            else:
                out = ("sum", out[1] + acc[1])
        return out

    def extract_output(self, acc):
        return None if acc is None else acc[1]


# ---------------------------------------------------------------- Wikipedia text

class PlanWorkUnits(beam.DoFn):
    """``(dump path, index path or None)`` -> the dump's work units."""

    def __init__(self, unit_bytes: int):
        self.unit_bytes = unit_bytes

    def process(self, spec):
        from queries.wikidump import plan_units
        dump, index = spec
        units = plan_units(dump, index, self.unit_bytes)
        yield _stat("dump.work_units", len(units))
        yield from units


class ReadArticles(beam.DoFn):
    """Work unit -> ``(title, wikitext)`` of its articles (ns 0, no redirects); skips counted."""

    def process(self, unit):
        from queries.wikidump import iter_articles
        counters: Counter = Counter()
        for page in iter_articles(unit, counters):
            yield page.title, page.text
        for name, n in counters.items():
            yield _stat(name, n)


def term_shard(term: str, shards: int) -> int:
    return zlib.crc32(term.encode("utf-8")) % shards


def sharded(counts: Counter, shards: int):
    """``{term: n}`` -> ``(shard, {term: n})`` pairs, a stable crc32 shard per term."""
    tables: dict[int, dict] = {}
    for term, n in counts.items():
        tables.setdefault(term_shard(term, shards), {})[term] = n
    return tables.items()


class SumCounts(beam.CombineFn):
    """Adds ``{term: count}`` tables. Keyed by shard in ``CombinePerKey``, so Beam's combiner
    lifting adds a bundle's tables per shard before the shuffle and the shards' totals after it."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, acc, table):
        acc.update(table)
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        out = next(accs)
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        return acc


class CleanAndCount(beam.DoFn):
    """``(title, wikitext)`` -> term counts: main output ``(shard, {word: n})``, tagged ``bigram``
    ``(shard, {"w1 w2": n})``, ``title`` (one per article) and ``stats``.

    Counts are summed over the pages of a bundle (flushed whenever ``flush_keys`` distinct terms are
    held, and at the bundle's end) and sent as one table per hash shard of the terms: Beam moves a
    few thousand elements per bundle instead of one per distinct term (each Beam element costs
    microseconds in Python; a dict update costs far less)."""

    def __init__(self, bigrams: bool = True, flush_keys: int = 200_000, shards: int = 1024):
        self.bigrams, self.flush_keys, self.shards = bigrams, flush_keys, shards

    def setup(self):
        from queries import wikitext
        self.wikitext = wikitext

    def start_bundle(self):
        self.unigrams: Counter = Counter()
        self.bigram_counts: Counter = Counter()
        self.counters: Counter = Counter()

    def _flush(self):
        yield from sharded(self.unigrams, self.shards)
        for item in sharded(self.bigram_counts, self.shards):
            yield pvalue.TaggedOutput("bigram", item)
        for name, n in self.counters.items():
            yield _stat(name, n)
        self.start_bundle()

    def process(self, page):
        title, text = page
        yield pvalue.TaggedOutput("title", title.replace("_", " "))  # dumps already write spaces
        try:
            clean = self.wikitext.clean_wikitext(text)
        except self.wikitext.WikitextError:
            self.counters["page.unparseable_wikitext"] += 1
            return
        self.counters["corpus.tokens"] += self.wikitext.count_terms(
            clean, self.unigrams, self.bigram_counts if self.bigrams else None)
        self.counters["corpus.wikitext_bytes"] += len(text.encode("utf-8"))
        if len(self.unigrams) + len(self.bigram_counts) >= self.flush_keys:
            yield from self._flush()

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MIN_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue
        for out in self._flush():
            if isinstance(out, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(out.tag, WindowedValue(out.value, MIN_TIMESTAMP, [GlobalWindow()]))
            else:
                yield WindowedValue(out, MIN_TIMESTAMP, [GlobalWindow()])


class CountWikipedia(beam.PTransform):
    """Dump specs ``(dump path, index path or None)`` -> a dict of PCollections: ``unigram``
    ``(shard, Counter of words)`` and ``bigram`` ``(shard, Counter of "w1 w2")``: every term's total
    count over all articles, each term in exactly one shard; ``title`` (one per article) and
    ``stats`` (counters). Steps: PlanWorkUnits -> SpreadUnits -> ReadArticles -> CleanAndCount ->
    CountUnigrams / CountBigrams (``CombinePerKey(SumCounts())``)."""

    def __init__(self, unit_bytes: int = 16 << 20, bigrams: bool = True, shards: int = 1024):
        super().__init__()
        self.unit_bytes, self.bigrams, self.shards = unit_bytes, bigrams, shards

    def expand(self, dumps):
        units = dumps | "PlanWorkUnits" >> beam.ParDo(PlanWorkUnits(self.unit_bytes)).with_outputs(
            STATS, main="units")
        articles = (units["units"]
                    | "SpreadUnits" >> beam.Reshuffle()
                    | "ReadArticles" >> beam.ParDo(ReadArticles()).with_outputs(STATS, main="pages"))
        counted = articles["pages"] | "CleanAndCount" >> beam.ParDo(CleanAndCount(self.bigrams, shards=self.shards)).with_outputs(
            STATS, "bigram", "title", main="unigram")
        return {
            "unigram": counted["unigram"] | "CountUnigrams" >> beam.CombinePerKey(SumCounts()),
            "bigram": (counted["bigram"] | "CountBigrams" >> beam.CombinePerKey(SumCounts())) if self.bigrams else None,
            "title": counted["title"],
            STATS: (units[STATS], articles[STATS], counted[STATS]) | "WikipediaStats" >> beam.Flatten(),
        }


def _log2_bin(count: int) -> int:
    return int(math.log2(count)) if count > 0 else 0


def _attach_first(item):
    """CoGroupByKey result on w1 -> (w2, (bigram, n12, n1))."""
    _, grouped = item
    counts = list(grouped["unigram"])
    if not counts:
        return
    for bigram, n12 in grouped["bigram"]:
        yield bigram.split(" ", 1)[1], (bigram, n12, counts[0])


def _attach_second(item):
    _, grouped = item
    counts = list(grouped["unigram"])
    if not counts:
        return
    for bigram, n12, n1 in grouped["bigram"]:
        yield bigram, n12, n1, counts[0]


def pmi(n12: int, n1: int, n2: int, total: int) -> float:
    """log2(n(w1 w2) * N / (n(w1) * n(w2)))."""
    return math.log2(n12) + math.log2(total) - math.log2(n1) - math.log2(n2)


class ScoreBigrams(beam.PTransform):
    """Candidate bigrams ``("w1 w2", n12)`` -> ``(bigram, n12, pmi)``, via two CoGroupByKey joins
    with the word counts. A bigram's words each occur at least n12 times, so only words with
    count >= the bigram minimum count (``frequent``) take part."""

    def __init__(self, frequent, total_tokens):
        super().__init__()
        self.frequent, self.total_tokens = frequent, total_tokens

    def expand(self, candidates):
        first = ({"unigram": self.frequent,
                  "bigram": candidates | "ByFirstWord" >> beam.Map(lambda kv: (kv[0].split(" ", 1)[0], kv))}
                 | "JoinFirstWord" >> beam.CoGroupByKey()
                 | "AttachFirst" >> beam.FlatMap(_attach_first))
        both = ({"unigram": self.frequent, "bigram": first}
                | "JoinSecondWord" >> beam.CoGroupByKey()
                | "AttachSecond" >> beam.FlatMap(_attach_second))
        return both | "PMI" >> beam.Map(
            lambda r, total: (r[0], r[1], pmi(r[1], r[2], r[3], total)),
            total=beam.pvalue.AsSingleton(self.total_tokens))


# ---------------------------------------------------------------- pageviews

class HourlyViews(beam.DoFn):
    """Hourly pageview file -> ``(title, views)`` for titles whose views that hour reach the
    hourly minimum."""

    def __init__(self, domains: Sequence[str], min_hourly: int):
        self.domains, self.min_hourly = tuple(domains), min_hourly

    def process(self, path):
        from queries.pageviews import qualifying_views
        counters: Counter = Counter()
        yield from qualifying_views(path, self.domains, self.min_hourly, counters)
        counters["pageviews.files"] += 1
        for name, n in counters.items():
            yield _stat(name, n)


def _join_titles(item):
    title, grouped = item
    in_dump = any(True for _ in grouped["dump"])
    views = list(grouped["views"])
    if views:
        yield _stat("title.passed_min_views", 1)
        if in_dump:
            yield _stat("title.in_dump", 1)
            yield title, ("title", views[0])


# ---------------------------------------------------------------- merge

_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
MERGE_BUCKETS = 64


def clean_query(query: str) -> str | None:
    """The query as written to the list (outer spaces stripped), or None when it cannot be one:
    empty, holding a tab or line break, or a single punctuation character (MetaCLIP drops those)."""
    q = query.strip()
    if not q or "\t" in q or "\n" in q or "\r" in q or q in _PUNCT:
        return None
    return q


def merge_bucket(query: str) -> int:
    """A stable bucket (crc32, unlike Python's per-process ``hash``) for the merge."""
    return zlib.crc32(query.encode("utf-8")) % MERGE_BUCKETS


def _wordnet_items(payload: str) -> list:
    return [(q, ("wordnet", n)) for q, n in json.loads(payload)]


def _bucketed(items):
    """``[(query, (part, statistic)), ...]`` -> ``(bucket, [valid items])`` per bucket; invalid
    queries counted."""
    buckets: dict[int, list] = {}
    invalid = 0
    for query, part in items:
        q = clean_query(query)
        if q is None:
            invalid += 1
            continue
        buckets.setdefault(merge_bucket(q), []).append((q, part))
    if invalid:
        yield _stat("query.invalid", invalid)
    yield from buckets.items()


def _merge_rows(item):
    """All items of one bucket -> one JSON line per query (joined by newlines)."""
    _, batches = item
    merged: dict[str, dict] = {}
    for batch in batches:
        for query, (part, stat) in batch:
            merged.setdefault(query, {})[part] = stat
    lines = [json.dumps(["query", {"query": q, "parts": dict(sorted(parts.items()))}], ensure_ascii=False)
             for q, parts in sorted(merged.items())]
    if lines:
        yield "\n".join(lines)


@dataclass
class Inputs:
    """What the pipeline reads: ``dumps`` as ``(dump path, index path or None)``, ``pageviews``
    paths, and the WordNet part as ``(query, synsets)`` pairs (computed by the launcher)."""
    dumps: list = field(default_factory=list)
    pageviews: list = field(default_factory=list)
    wordnet: list = field(default_factory=list)


def _unigram_shard(kv, min_count: int, keep: bool, bigram_min_count: int | None):
    """One shard of word counts -> corpus statistics and histogram bins (as stats), the unigram
    part records (main output), the shard's token total (``total``) and, for the bigram joins,
    the words with count >= the bigram minimum (``frequent``)."""
    _, counts = kv
    bins: Counter = Counter()
    passed = 0
    for word, n in counts.items():
        bins[_log2_bin(n)] += 1
        if keep and n >= min_count:
            passed += 1
            yield word, ("unigram", n)
        if bigram_min_count is not None and n >= bigram_min_count:
            yield pvalue.TaggedOutput("frequent", (word, n))
    yield _stat("corpus.distinct_unigrams", len(counts))
    for b, k in bins.items():
        yield _stat(f"hist.{b}", k)
    if passed:
        yield _stat("passed.unigram_min_count", passed)
    yield pvalue.TaggedOutput("total", sum(counts.values()))


def _bigram_shard(kv, min_count: int):
    """One shard of bigram counts -> candidates ``("w1 w2", n)`` with n >= min_count."""
    _, counts = kv
    yield _stat("corpus.distinct_bigrams", len(counts))
    for bigram, n in counts.items():
        if n >= min_count:
            yield bigram, n


def _bigram_part(scored, min_pmi: float):
    bigram, n12, score = scored
    yield _stat("passed.bigram_min_count", 1)
    yield _stat("corpus.bigram_pmi_max", score, "max")
    if score >= min_pmi:
        yield _stat("passed.bigram_min_pmi", 1)
        yield bigram, ("bigram", [n12, score])


def _line(kind: str):
    return lambda value: json.dumps([kind, value], ensure_ascii=False)


class QueryCandidates(beam.PTransform):
    """Dump specs, pageview files and the WordNet part -> ``work_dir/result-*.jsonl``: one JSON
    array per line, ``["query", {"query": q, "parts": {...}}]`` or ``["stat", [name, value]]``."""

    def __init__(self, inputs: Inputs, params: QueryParams, work_dir: str):
        super().__init__()
        self.inputs, self.params, self.work_dir = inputs, params, work_dir

    def expand(self, p):
        inputs, params, work_dir = self.inputs, self.params, self.work_dir
        stats, parts = [], []
        counted = (p | "DumpFiles" >> beam.Create(inputs.dumps)
                   | "Wikipedia" >> CountWikipedia(params.unit_bytes, bigrams="bigram" in params.parts))
        stats.append(counted[STATS])
        with_bigrams = "bigram" in params.parts
        unigrams = counted["unigram"] | "KeepUnigrams" >> beam.FlatMap(
            _unigram_shard, params.unigram_min_count, "unigram" in params.parts,
            params.bigram_min_count if with_bigrams else None).with_output_types(
            Tuple[str, Any]).with_outputs(STATS, "frequent", "total", main="part")
        stats.append(unigrams[STATS])
        if "unigram" in params.parts:
            parts.append(("Unigrams", unigrams["part"]))

        if with_bigrams:
            total_tokens = unigrams["total"] | "TotalTokens" >> beam.CombineGlobally(sum)
            candidates = counted["bigram"] | "BigramCandidates" >> beam.FlatMap(
                _bigram_shard, params.bigram_min_count).with_output_types(Tuple[str, int]).with_outputs(
                STATS, main="candidates")
            stats.append(candidates[STATS])
            scored = candidates["candidates"] | "ScoreBigrams" >> ScoreBigrams(unigrams["frequent"], total_tokens)
            bigrams = scored | "KeepBigrams" >> beam.FlatMap(_bigram_part, params.bigram_min_pmi).with_output_types(
                Tuple[str, Any]).with_outputs(STATS, main="part")
            stats.append(bigrams[STATS])
            parts.append(("Bigrams", bigrams["part"]))

        if "title" in params.parts:
            hourly = (p
                      | "PageviewFiles" >> beam.Create(inputs.pageviews)
                      | "SpreadPageviews" >> beam.Reshuffle()
                      | "HourlyViews" >> beam.ParDo(HourlyViews(params.pageview_domains,
                                                                params.title_min_hourly_views)).with_outputs(STATS, main="views"))
            stats.append(hourly[STATS])
            mv = params.title_min_views
            views = (hourly["views"]
                     | "SumViews" >> beam.CombinePerKey(sum)
                     | "MinViews" >> beam.Filter(lambda kv: kv[1] >= mv))
            dump_titles = counted["title"] | "TitleKeys" >> beam.Map(lambda t: (t, None))
            joined = ({"dump": dump_titles, "views": views}
                      | "JoinTitles" >> beam.CoGroupByKey()
                      | "TitleInDump" >> beam.FlatMap(_join_titles).with_output_types(Tuple[str, Any])
                      .with_outputs(STATS, main="titles"))
            stats.append(joined[STATS])
            parts.append(("Titles", joined["titles"]))

        batches = [pc | f"Batch{part}" >> beam.Map(lambda kv: [kv]) for part, pc in parts]
        if "wordnet" in params.parts:
            # ~86k entries: sent as a few JSON batches, not one Beam element each (and not as Python
            # objects, whose type inference in Create alone takes seconds)
            items = list(inputs.wordnet)
            payload = [json.dumps(items[i:i + 4000], ensure_ascii=False) for i in range(0, len(items), 4000)]
            batches.append(p | "WordNetPart" >> beam.Create(payload, reshuffle=False)
                           | "WordNetItems" >> beam.Map(_wordnet_items))
        results = []
        if batches:
            bucketed = (batches | "AllParts" >> beam.Flatten()
                        | "ValidQueries" >> beam.FlatMap(_bucketed).with_output_types(Tuple[int, Any])
                        .with_outputs(STATS, main="valid"))
            stats.append(bucketed[STATS])
            results.append(bucketed["valid"]
                           | "Merge" >> beam.GroupByKey()
                           | "MergedRows" >> beam.FlatMap(_merge_rows))
        results.append(stats
                       | "AllStats" >> beam.Flatten()
                       | "SumStats" >> beam.CombinePerKey(StatsFn())
                       | "StatLines" >> beam.Map(_line("stat")))
        return (results
                | "AllResults" >> beam.Flatten()
                | "WriteResults" >> beam.io.WriteToText(f"{work_dir}/result", file_name_suffix=".jsonl"))


def run_pipeline(inputs: Inputs, params: QueryParams, work_dir: str, beam_options: BeamOptions) -> None:
    """Run ``QueryCandidates`` to completion."""
    run_beam(lambda p: p | "Queries" >> QueryCandidates(inputs, params, work_dir), beam_options)


def run(cfg: BuildConfig, beam_options: BeamOptions = BeamOptions(), *, overwrite: bool = False) -> dict:
    """``wit queries``: build ``cfg.out/{queries.parquet, queries.txt, stats.json, queries.png}``;
    returns the stats. Raises :class:`WitError` on bad inputs (before the pipeline starts) and when
    the dumps hold no article. A finished build of the same inputs and options is kept."""
    params = cfg.params
    cfg.validate()
    dumps = collect_inputs(cfg.dumps, params.use_index)
    pageviews: list[str] = []
    if "title" in params.parts:
        if not cfg.pageviews:
            raise WitError("the title part needs hourly pageview files (--pageviews), "
                           "or leave 'title' out of --parts")
        pageviews = match_paths(cfg.pageviews, "pageview")
    signature = _signature(cfg, dumps, pageviews)
    prev = finished_run(cfg.out, {"signature": signature}, overwrite=overwrite, needs=OUTPUTS)
    if prev is not None:
        return prev

    wordnet_info: dict = {}
    wordnet_items: list = []
    if "wordnet" in params.parts:
        from queries import wordnet as wn
        root = wn.wordnet_root(cfg.wordnet_dir, allow_download=cfg.wordnet_download)
        part = wn.wordnet_part(root)
        wordnet_items = sorted(part.items())
        wordnet_info = {"root": str(root), "version": wn.wordnet_version(root),
                        "synsets": sum(part.values()), "head_names": len(part) - sum(
                            1 for s in wn.EXTRA_STRINGS if part.get(s) == 0),
                        "extra_strings": len(wn.EXTRA_STRINGS)}

    work_dir = f"{cfg.out.rstrip('/')}/.wit-work-{uuid.uuid4().hex[:10]}"
    made_out = is_local(cfg.out) and not os.path.exists(cfg.out)
    if is_local(work_dir):
        os.makedirs(work_dir, exist_ok=True)
    started = time.time()
    try:
        run_pipeline(Inputs(dumps=dumps, pageviews=pageviews, wordnet=wordnet_items), params, work_dir, beam_options)
        pipeline_s = time.time() - started
        merged, counters = [], {}
        for kind, value in read_results(work_dir, "result"):
            if kind == "query":
                merged.append(value)
            else:
                counters[value[0]] = value[1]
        if not counters.get("page.article"):
            raise WitError(f"no articles (namespace 0, not redirects) in {', '.join(d for d, _ in dumps)} "
                           f"({counters.get('page.read', 0)} pages read); nothing written")
        histogram = {int(k[5:]): v for k, v in counters.items() if k.startswith("hist.")}
    except BaseException:
        remove_tree(work_dir)
        if made_out and not os.listdir(cfg.out):
            os.rmdir(cfg.out)  # leave no trace of a failed first build
        raise
    remove_tree(work_dir)

    rows, trimmed = order_and_trim(merged, cfg.target_size)
    part_sizes = Counter(p for r in merged for p in r["parts"])
    output_sizes = Counter(p for r in rows for p in r["parts"])
    stats = {
        "output": {"queries": len(rows), "target_size": cfg.target_size, "union_size": len(merged),
                   "trimmed": trimmed, "short_of_target": max(0, cfg.target_size - len(merged)),
                   "trim_rule": TRIM_RULE},
        "parts": {p: {"size": part_sizes.get(p, 0), "in_output": output_sizes.get(p, 0),
                      "enabled": p in params.parts} for p in PART_ORDER},
        "thresholds": {"unigram_min_count": params.unigram_min_count,
                       "bigram_min_count": params.bigram_min_count,
                       "bigram_min_pmi": params.bigram_min_pmi,
                       "title_min_views": params.title_min_views,
                       "title_min_hourly_views": params.title_min_hourly_views,
                       "pageview_domains": list(params.pageview_domains)},
        "passed": {"unigram_min_count": counters.get("passed.unigram_min_count", 0),
                   "bigram_min_count": counters.get("passed.bigram_min_count", 0),
                   "bigram_min_count_and_min_pmi": counters.get("passed.bigram_min_pmi", 0),
                   "title_hours_min_hourly_views": counters.get("pageviews.title_hours_kept", 0),
                   "title_min_views": counters.get("title.passed_min_views", 0),
                   "title_min_views_and_article": counters.get("title.in_dump", 0)},
        **_nest(counters),
        "inputs": {"dumps": [{**_sizes([d])[0], "index": i, "index_bytes": _sizes([i])[0]["bytes"] if i else None}
                             for d, i in dumps],
                   "pageviews": _sizes(pageviews), "wordnet": wordnet_info or None},
        "run": {"runner": beam_options.runner, "workers": beam_options.workers, "pipeline_seconds": round(pipeline_s, 2),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "counters": {k: v for k, v in sorted(counters.items()) if not k.startswith("hist.")},
        "unigram_count_histogram": {f"{2 ** b}-{2 ** (b + 1) - 1}": n for b, n in sorted(histogram.items())},
        "signature": signature,
    }
    if "corpus.bigram_pmi_max" in counters and isinstance(counters["corpus.bigram_pmi_max"], float):
        stats["corpus"]["bigram_pmi_max"] = round(counters["corpus.bigram_pmi_max"], 4)

    out = cfg.out.rstrip("/")
    if is_local(out):
        os.makedirs(out, exist_ok=True)
    # stats.json last: its presence with a matching signature marks a complete build
    atomic_write_parquet(f"{out}/queries.parquet", to_table(rows))
    with atomic_open(f"{out}/queries.txt", "w") as fh:
        for r in rows:
            fh.write(r["query"] + "\n")
    plot(f"{out}/queries.png", part_sizes, output_sizes, histogram, params.unigram_min_count)
    atomic_write_json(f"{out}/stats.json", stats)
    return stats
