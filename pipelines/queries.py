"""Beam pipeline behind ``wit queries``: Wikipedia dumps + pageviews + WordNet -> query candidates.

Graph (each step a named transform)::

    dump specs ─ PlanWorkUnits ─ SpreadUnits ─ ReadArticles ─ CleanAndCount ─┬─ word tables ─ CountUnigrams ─ KeepUnigrams
                                                                              ├─ bigram tables ─ CountBigrams ─ BigramCandidates ─ ScoreBigrams ─ KeepBigrams ─ TopBigrams
                                                                              └─ title ─┐
    pageview files ─ SpreadPageviews ─ HourlyViews ─ SumViews ─ MinViews ─ JoinTitles ─ TitleInDump ─ TopTitles
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
``TopBigrams``/``TopTitles`` (with ``--bigram-count``/``--title-count``) keep the best candidates
by size: ``combiners.Top.Of``, whose partial tops per bundle are merged after the shuffle, with the
total orders of :func:`queries.build.bigram_selection_key` and ``title_selection_key``.

Output: ``work_dir/result-*.jsonl``, read back by :func:`run`, the stage's driver: ``["query", {"query": q,
"parts": {part: statistic}}]`` per query and ``["stat", [name, value]]`` per counter (skips by
reason, threshold passes, corpus sizes, ``hist.B``: distinct words with count in [2^B, 2^(B+1))).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence, Tuple

import apache_beam as beam
from apache_beam import pvalue

from pipelines.beam_options import BeamOptions, run_pipeline
from queries.build import (OUTPUTS, BuildConfig, Candidates, QueryParams, _signature, _sizes, bigram_selection_key,
                           build_stats, collect_inputs, order_and_trim, pageview_inputs, read_candidates,
                           remove_tree, title_selection_key, wordnet_items, write_outputs)
from queries.pageviews import MAX_VIEWS
from queries.terms import clean_query, log2_bin, merge_bucket, pmi, sharded
from wit_builder import records
from wit_builder.core import finished_run, is_local

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


def _sum_views(values) -> int:
    """Views of a title over the counted hours, saturated at the int64 maximum (the parquet column's
    type): associative, so Beam may apply it to partial sums."""
    return min(sum(values), MAX_VIEWS)


def _join_titles(item):
    title, grouped = item
    in_dump = any(True for _ in grouped["dump"])
    views = list(grouped["views"])
    if views:
        yield _stat("title.passed_min_views", 1)
        if in_dump and clean_query(title) is None:  # an article named "?": no query, and no slot of --title-count
            yield _stat("query.invalid", 1)
        elif in_dump:
            yield _stat("title.in_dump", 1)
            yield title, ("title", views[0])


# ---------------------------------------------------------------- merge

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
        bins[log2_bin(n)] += 1
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


def _bigram_part(scored, min_pmi: float | None):
    bigram, n12, score = scored
    yield _stat("passed.bigram_min_count", 1)
    yield _stat("corpus.bigram_pmi_max", score, "max")
    if min_pmi is None or score >= min_pmi:
        yield _stat("passed.bigram_min_pmi", 1)
        yield bigram, ("bigram", [n12, score])


class SelectTop(beam.PTransform):
    """Part records ``(query, (part, statistic))`` -> the ``count`` first by ``key`` (all of them
    when there are fewer; ``count`` None keeps all). ``Top.Of`` keeps at most ``count`` records per
    bundle and merges the partial tops after the shuffle; ``key`` is a total order, so the result
    does not depend on how the records were bundled."""

    def __init__(self, count: int | None, key):
        super().__init__()
        self.count, self.key = count, key

    def expand(self, records):
        if self.count is None:
            return records
        return (records
                | "Top" >> beam.combiners.Top.Of(self.count, key=self.key, reverse=True)
                | "Records" >> beam.FlatMap(lambda top: top).with_output_types(Tuple[str, Any]))


def _line(kind: str):
    return lambda value: json.dumps([kind, value], ensure_ascii=False)


class QueryCandidates(beam.PTransform):
    """Dump specs, pageview files and the WordNet part -> ``work_dir/result-*.jsonl``: one JSON
    array per line, ``["query", {"query": q, "parts": {...}}]`` or ``["stat", [name, value]]``."""

    def __init__(self, inputs: Inputs, params: QueryParams, work_dir: str):
        super().__init__()
        self.inputs, self.params, self.work_dir = inputs, params, work_dir

    def expand(self, p):
        params = self.params
        stats, parts = [], []
        counted = (p | "DumpFiles" >> beam.Create(self.inputs.dumps)
                   | "Wikipedia" >> CountWikipedia(params.unit_bytes, bigrams="bigram" in params.parts))
        stats.append(counted[STATS])
        unigrams = counted["unigram"] | "KeepUnigrams" >> beam.FlatMap(
            _unigram_shard, params.unigram_min_count, "unigram" in params.parts,
            params.bigram_min_count if "bigram" in params.parts else None).with_output_types(
            Tuple[str, Any]).with_outputs(STATS, "frequent", "total", main="part")
        stats.append(unigrams[STATS])
        if "unigram" in params.parts:
            parts.append(("Unigrams", unigrams["part"]))
        if "bigram" in params.parts:
            parts.append(("Bigrams", self._bigrams(counted, unigrams, stats)))
        if "title" in params.parts:
            parts.append(("Titles", self._titles(p, counted, stats)))
        batches = [pc | f"Batch{part}" >> beam.Map(lambda kv: [kv]) for part, pc in parts]
        if "wordnet" in params.parts:
            # ~86k entries: sent as a few JSON batches, not one Beam element each (and not as Python
            # objects, whose type inference in Create alone takes seconds)
            items = list(self.inputs.wordnet)
            payload = [json.dumps(items[i:i + 4000], ensure_ascii=False) for i in range(0, len(items), 4000)]
            batches.append(p | "WordNetPart" >> beam.Create(payload, reshuffle=False)
                           | "WordNetItems" >> beam.Map(_wordnet_items))
        return self._write(batches, stats)

    def _bigrams(self, counted, unigrams, stats: list):
        params = self.params
        total_tokens = unigrams["total"] | "TotalTokens" >> beam.CombineGlobally(sum)
        candidates = counted["bigram"] | "BigramCandidates" >> beam.FlatMap(
            _bigram_shard, params.bigram_min_count).with_output_types(Tuple[str, int]).with_outputs(
            STATS, main="candidates")
        stats.append(candidates[STATS])
        scored = candidates["candidates"] | "ScoreBigrams" >> ScoreBigrams(unigrams["frequent"], total_tokens)
        bigrams = scored | "KeepBigrams" >> beam.FlatMap(_bigram_part, params.bigram_min_pmi).with_output_types(
            Tuple[str, Any]).with_outputs(STATS, main="part")
        stats.append(bigrams[STATS])
        return bigrams["part"] | "TopBigrams" >> SelectTop(params.bigram_count, bigram_selection_key)

    def _titles(self, p, counted, stats: list):
        params = self.params
        hourly = (p
                  | "PageviewFiles" >> beam.Create(self.inputs.pageviews)
                  | "SpreadPageviews" >> beam.Reshuffle()
                  | "HourlyViews" >> beam.ParDo(HourlyViews(params.pageview_domains,
                                                            params.title_min_hourly_views)).with_outputs(STATS, main="views"))
        stats.append(hourly[STATS])
        mv = params.title_min_views
        views = (hourly["views"]
                 | "SumViews" >> beam.CombinePerKey(_sum_views)
                 | "MinViews" >> beam.Filter(lambda kv: kv[1] >= mv))
        dump_titles = counted["title"] | "TitleKeys" >> beam.Map(lambda t: (t, None))
        joined = ({"dump": dump_titles, "views": views}
                  | "JoinTitles" >> beam.CoGroupByKey()
                  | "TitleInDump" >> beam.FlatMap(_join_titles).with_output_types(Tuple[str, Any])
                  .with_outputs(STATS, main="titles"))
        stats.append(joined[STATS])
        return joined["titles"] | "TopTitles" >> SelectTop(params.title_count, title_selection_key)

    def _write(self, batches: list, stats: list):
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
                | "WriteResults" >> beam.io.WriteToText(f"{self.work_dir}/result", file_name_suffix=".jsonl"))


def run_candidates(inputs: Inputs, params: QueryParams, work_dir: str, beam_options: BeamOptions) -> None:
    """Run ``QueryCandidates`` to completion."""
    run_pipeline(lambda p: p | "Queries" >> QueryCandidates(inputs, params, work_dir), beam_options)


def _candidates(cfg: BuildConfig, inputs: Inputs, beam_options: BeamOptions) -> tuple[Candidates, float]:
    """Run the pipeline into a work folder next to the outputs and read its results back; a
    failed first build leaves no trace."""
    work_dir = f"{cfg.out.rstrip('/')}/.wit-work-{uuid.uuid4().hex[:10]}"
    made_out = is_local(cfg.out) and not os.path.exists(cfg.out)
    if is_local(work_dir):
        os.makedirs(work_dir, exist_ok=True)
    started = time.time()
    try:
        run_candidates(inputs, cfg.params, work_dir, beam_options)
        seconds = time.time() - started
        cand = read_candidates(work_dir, [d for d, _ in inputs.dumps])
    except BaseException:
        remove_tree(work_dir)
        if made_out and not os.listdir(cfg.out):
            os.rmdir(cfg.out)
        raise
    remove_tree(work_dir)
    return cand, seconds


def run(cfg: BuildConfig, beam_options: BeamOptions = BeamOptions(), *, overwrite: bool = False) -> dict:
    """``wit queries``: build ``cfg.out/{queries.parquet, queries.txt, stats.json, queries.png}``;
    returns the stats. Raises :class:`WitError` on bad inputs (before the pipeline starts) and when
    the dumps hold no article. A finished build of the same inputs and options is kept."""
    cfg.validate()
    dumps = collect_inputs(cfg.dumps, cfg.params.use_index)
    pageviews = pageview_inputs(cfg)
    signature = _signature(cfg, dumps, pageviews)
    prev = finished_run(cfg.out, {"signature": signature}, overwrite=overwrite, needs=OUTPUTS)
    if prev is not None:
        return prev
    items, wordnet_info = wordnet_items(cfg)
    cand, seconds = _candidates(cfg, Inputs(dumps=dumps, pageviews=pageviews, wordnet=items), beam_options)
    rows, trimmed = order_and_trim(cand.merged, cfg.target_size)
    inputs = {"dumps": [{**_sizes([d])[0], "index": i, "index_bytes": _sizes([i])[0]["bytes"] if i else None}
                        for d, i in dumps],
              "pageviews": _sizes(pageviews), "wordnet": wordnet_info or None}
    run_info = {"runner": beam_options.runner, "workers": beam_options.workers, "pipeline_seconds": round(seconds, 2),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    stats = build_stats(cfg, cand, rows, trimmed, inputs, run_info, signature)
    records.begin(cfg.out, "queries")  # the outputs are written only from here on
    write_outputs(cfg, cand, rows, stats)
    records.complete_folder(cfg.out, "queries", inputs=[d for d, _ in dumps] + list(pageviews),
                            counts={"queries": len(rows)})
    return stats
