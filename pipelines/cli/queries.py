"""``wit queries``: build CLIP's query list from Wikipedia dumps, pageviews and WordNet."""
from __future__ import annotations

import argparse

from pipelines.cli.beam_args import add_beam_arguments

BEAM_OPTIONS = True
DESCRIPTION = (
    "Build the query list of CLIP (Radford et al. 2021, sec. 2.2): words occurring at least "
    "--unigram-min-count times in English Wikipedia's article text, bigrams with high pointwise "
    "mutual information, titles of articles with enough pageviews, and every WordNet synset's head "
    "name. Writes OUT/queries.parquet, OUT/queries.txt, OUT/stats.json and OUT/queries.png "
    "(docs/queries.md, docs/schemas.md). Runs as an Apache Beam pipeline: locally by default, on "
    "Dataflow with --runner DataflowRunner --project P --region R --temp_location gs://B/tmp "
    "--setup_file ./setup.py.")


def _parts(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _count(value: str, option: str) -> int | None:
    """A part size: a whole number >= 1, or ``all`` (no size limit: the thresholds alone)."""
    from wit_builder.core import WitError
    if str(value).strip().lower() == "all":
        return None
    try:
        return int(value)  # >= 1 is checked with the other options (BuildConfig.validate)
    except ValueError:
        raise WitError(f"{option} must be a whole number >= 1 or 'all' (got {value!r})") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from queries.build import METACLIP_SIZES
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--dumps", nargs="+", required=True, metavar="PATH",
                    help="English Wikipedia pages-articles XML dumps: files, globs or folders (local or "
                         "gs://): .xml, .xml.bz2, the pagesN part files (.xml-pA-pB.bz2), or the "
                         "multistream .xml.bz2, whose -index.txt.bz2 (given here too or lying next to "
                         "it) splits the dump into work units at its bz2 stream offsets")
    io.add_argument("--pageviews", nargs="+", default=[], metavar="PATH",
                    help="hourly Wikimedia pageview files pageviews-YYYYMMDD-HH0000.gz (files, globs "
                         "or folders), for the title part")
    io.add_argument("--out", required=True, metavar="DIR",
                    help="output folder for queries.parquet, queries.txt, stats.json, queries.png")
    io.add_argument("--overwrite", action="store_true",
                    help="replace a finished build in OUT (without it: a build of the same inputs and options "
                         "is kept and the command returns at once; one of other inputs or options is an error)")

    th = parser.add_argument_group("parts and thresholds")
    th.add_argument("--parts", type=_parts, default="wordnet,unigram,bigram,title",
                    metavar="LIST", help="comma-separated parts to build: wordnet,unigram,bigram,title")
    th.add_argument("--unigram-min-count", type=int, default=100, metavar="N",
                    help="keep words occurring at least N times in article text (CLIP's 100)")
    th.add_argument("--bigram-min-count", type=int, default=100, metavar="N",
                    help="the floor: a bigram must occur at least N times before its PMI counts: PMI "
                         "overrates rare pairs (a pair seen once, of words seen once, gets the maximum "
                         "log2 N); 100 holds bigrams to the unigrams' standard and makes both of "
                         "their words queries")
    th.add_argument("--bigram-min-pmi", type=float, default=None, metavar="X",
                    help="keep only bigrams with PMI = log2(n(w1 w2) N / (n(w1) n(w2))) >= X, N = words "
                         "in the corpus (default: no PMI threshold, --bigram-count decides; MetaCLIP's "
                         "30 leaves no bigram on Wikipedia, see docs/queries.md)")
    th.add_argument("--bigram-count", default=str(METACLIP_SIZES["bigram"]), metavar="N|all",
                    help="keep the N bigrams of highest PMI among those passing the thresholds (ties: "
                         "higher count, then the bigram's string); all when fewer pass (default: "
                         "MetaCLIP's bigram part size, %(default)s)")
    th.add_argument("--title-min-views", type=int, default=70, metavar="N",
                    help="keep article titles whose views, summed over the counted hours, reach N "
                         "(MetaCLIP's 70)")
    th.add_argument("--title-count", default=str(METACLIP_SIZES["title"]), metavar="N|all",
                    help="keep the N most viewed titles among those passing the thresholds (ties: the "
                         "title's string); all when fewer pass (default: MetaCLIP's title part size, "
                         "%(default)s)")
    th.add_argument("--title-min-hourly-views", type=int, default=50, metavar="N",
                    help="an hour counts for a title only when it has at least N views (MetaCLIP's 50)")
    th.add_argument("--pageview-domains", type=_parts, default="en,en.m", metavar="LIST",
                    help="pageview domain codes that are English Wikipedia: en (desktop), en.m (mobile web)")
    th.add_argument("--target-size", type=int, default=500_000, metavar="N",
                    help="size of the list: a larger union is cut by rank (wordnet, unigram, bigram, "
                         "title; then statistic); a smaller one is reported in stats.json")

    wn = parser.add_argument_group("WordNet")
    wn.add_argument("--wordnet-dir", default=None, metavar="DIR",
                    help="a WordNet 3.0 dict folder (Princeton format) to use. Without it: the cache "
                         "($WIT_CACHE/nltk_data, else ~/.cache/wit/nltk_data), then $WNSEARCHDIR, "
                         "$WNHOME/dict, Debian's /usr/share/wordnet (apt-get install wordnet-base "
                         "wordnet-sense-index), NLTK's data path, and last NLTK's downloader")
    wn.add_argument("--no-wordnet-download", dest="wordnet_download", action="store_false",
                    default=argparse.SUPPRESS,
                    help="never try NLTK's downloader (offline machines); by default it is the last resort")

    sc = parser.add_argument_group("scale")
    sc.add_argument("--unit-mb", type=float, default=16.0, metavar="MB",
                    help="compressed MB per work unit when a multistream index splits a dump")
    sc.add_argument("--no-index", dest="use_index", action="store_false", default=argparse.SUPPRESS,
                    help="read multistream dumps whole (one work unit per file) even when their index is there")
    from pipelines.cli.checks import add_skip_share
    add_skip_share(parser, 0.05, "the pageview lines or files (unparseable, empty, corrupt)")
    add_beam_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines import queries
    from queries.build import BuildConfig, QueryParams, describe
    params = QueryParams(
        unigram_min_count=args.unigram_min_count, bigram_min_count=args.bigram_min_count,
        bigram_min_pmi=args.bigram_min_pmi, bigram_count=_count(args.bigram_count, "--bigram-count"),
        title_min_views=args.title_min_views, title_count=_count(args.title_count, "--title-count"),
        title_min_hourly_views=args.title_min_hourly_views,
        pageview_domains=tuple(args.pageview_domains), parts=tuple(args.parts),
        unit_bytes=int(args.unit_mb * (1 << 20)), use_index=getattr(args, "use_index", True))
    cfg = BuildConfig(dumps=args.dumps, out=args.out, pageviews=args.pageviews,
                      target_size=args.target_size, wordnet_dir=args.wordnet_dir,
                      wordnet_download=getattr(args, "wordnet_download", True), params=params)
    stats = queries.run(cfg, args.beam, overwrite=args.overwrite)
    if stats.get("resumed"):
        print(f"wit queries: {args.out} is already built from these inputs and options "
              f"({describe(stats)}); --overwrite rebuilds")
    else:
        print(f"wit queries: wrote {args.out}: {describe(stats)}")
    _warn_skips(stats, args.warn_skip_share)
    return 0


def _warn_skips(stats: dict, limit: float) -> None:
    """A warning when many pageview lines or files could not be read."""
    from pipelines.cli.checks import top, warn_skipped
    skipped = stats.get("skipped") or {}
    lines = skipped.get("pageview_lines") or {}
    read = int((stats.get("pageviews") or {}).get("lines", 0))
    warn_skipped("queries", int(sum(lines.values())), read, limit, "pageview lines", top(lines))
    files = skipped.get("pageview_files") or {}
    total = int((stats.get("pageviews") or {}).get("files", 0)) or len(stats.get("inputs", {}).get("pageviews") or [])
    warn_skipped("queries", int(sum(files.values())), total, limit, "pageview files", top(files))
