"""`wit download`: balanced (url, text) pairs -> img2dataset WebDataset shards (SSRF-safe, resumable)."""
from __future__ import annotations

import argparse
import sys

from pipelines.cli.checks import add_skip_share
from wit_builder.core import WitError

DESCRIPTION = (
    "Download the images of `wit collect`'s balanced pairs with img2dataset: the pairs that share an "
    "image URL become one sample (one download), and the samples are cut into shards of at most "
    "--samples-per-shard: IMAGES/NNNNN.tar (KEY.jpg, KEY.txt, KEY.json) + NNNNN.parquet (every "
    "sample with its status and error) + NNNNN_stats.json. Requests to loopback, private, link-local, multicast, "
    "reserved or unspecified addresses are refused, redirects included; X-Robots-Tag opt-outs "
    "(noai, noimageai, noindex, noimageindex) are honoured. Killed at any point, re-run the same "
    "command: finished shards are kept, the others redone. See docs/download.md.")

BEAM_OPTIONS = True  # unknown --options go to Beam (for --runner other than local)


def _resolve_entry(text: str) -> tuple[str, str]:
    host, sep, ip = text.partition("=")
    if not sep or not host or not ip:
        raise argparse.ArgumentTypeError(f"expected HOST=IP, got {text!r}")
    return host, ip


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wit_builder.download import DEFAULT_DISALLOWED, DownloadOptions
    from wit_builder.netsafety import DEFAULT_CONTENT_TYPES
    d = DownloadOptions()
    parser.add_argument("--pairs", nargs="+", required=True,
                        help="balanced pairs: OUT/balanced (a directory), globs or parquet files with "
                             "url and text columns (uid, query_ids, page_url are carried along); or a "
                             "LAION/DataComp parquet with --url-col/--caption-col")
    parser.add_argument("--out", required=True, help="output folder IMAGES (local path or gs://...)")
    parser.add_argument("--url-col", default=d.url_col,
                        help="the inputs' URL column (img2dataset's url_col; LAION: URL, DataComp: url)")
    parser.add_argument("--caption-col", default=d.caption_col,
                        help="the inputs' caption column (img2dataset's caption_col; LAION: TEXT, "
                             "DataComp: text). A uid column is kept (DataComp's hex uid); without one "
                             "the uid is sha256(url + newline + caption), first 32 hex digits")
    parser.add_argument("--output-format", default=d.output_format, choices=["webdataset", "parquet", "files"],
                        help="img2dataset's output_format: webdataset = NNNNN.tar (what wit dedup, wit "
                             "balance --pool and wit shards read), parquet = the images inside "
                             "NNNNN.parquet, files = NNNNN/KEY.jpg")

    g = parser.add_argument_group("images")
    g.add_argument("--image-size", type=int, default=d.image_size, help="side of the resized image, pixels")
    g.add_argument("--resize-mode", default=d.resize_mode,
                   choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"],
                   help="img2dataset's resize mode: border = fit inside and pad to a square (white), "
                        "keep_ratio = smaller side to --image-size, keep_ratio_largest = larger side "
                        "to --image-size, center_crop = keep_ratio then crop the centre, no = as is")
    g.add_argument("--resize-only-if-bigger", action="store_true", help="never upscale small images")
    g.add_argument("--min-image-size", type=int, default=d.min_image_size,
                   help="img2dataset's: an image whose width or height is below this fails (too_small)")
    g.add_argument("--max-aspect-ratio", type=float, default=d.max_aspect_ratio,
                   help="img2dataset's: an image whose longer side / shorter side is above this fails "
                        "(aspect_ratio); default: no limit")
    g.add_argument("--encode-format", default=d.encode_format, choices=["jpg", "png", "webp"],
                   help="format images are re-encoded to (the stage contract expects jpg)")
    g.add_argument("--encode-quality", type=int, default=d.encode_quality,
                   help="JPEG/WebP quality 0-100 (PNG: compression 0-9)")

    g.add_argument("--samples-per-shard", type=int, default=d.samples_per_shard,
                   help="most samples (image URLs) per shard, however the input parquets are split "
                        "(img2dataset's number_sample_per_shard; above 10000 the keys get wider)")

    add_skip_share(g, 0.5, "the images (failed downloads; the web loses many)")
    g = parser.add_argument_group("speed")
    g.add_argument("--processes", type=int, default=d.processes,
                   help="download processes (local runner; 0 = one per CPU core)")
    g.add_argument("--threads", type=int, default=d.threads, help="download threads per process")
    g.add_argument("--timeout", type=float, default=d.timeout, help="seconds per connect and per read")
    g.add_argument("--retries", type=int, default=d.retries, help="extra attempts for a failed image")
    g.add_argument("--max-shard-retry", type=int, default=d.max_shard_retry,
                   help="times img2dataset retries a shard whose worker failed (local runner)")

    g = parser.add_argument_group("safety")
    g.add_argument("--allow-private-networks", action="store_true",
                   help="turn the SSRF guard's address check off: allow loopback, private, link-local "
                        "(169.254.169.254 cloud metadata!), multicast, reserved addresses. For tests and "
                        "local demos only")
    g.add_argument("--allowed-endpoint", action="append", default=[], metavar="IP:PORT",
                   help="exempt exactly this address and port from the address check, e.g. a local "
                        "test server 127.0.0.1:8000 or [::1]:8000 (repeatable)")
    g.add_argument("--resolve", action="append", default=[], type=_resolve_entry, metavar="HOST=IP",
                   help="resolve HOST to IP without DNS, like curl --resolve (repeatable); "
                        "HOST:PORT=IP:PORT also replaces the port, like curl --connect-to (a URL "
                        "without a port has port 80). The address is still checked, so pair a "
                        "loopback IP with --allowed-endpoint")
    g.add_argument("--user-agent", default=d.user_agent, help="User-Agent header sent with every request")
    g.add_argument("--user-agent-token", default=d.user_agent_token,
                   help="name matched by user-agent-specific X-Robots-Tag directives ('wit: noai')")
    g.add_argument("--disallowed-header-directives", type=_csv, default=list(DEFAULT_DISALLOWED),
                   metavar="LIST",
                   help="X-Robots-Tag directives that opt an image out (comma-separated; img2dataset's "
                        "default list; noai and noimageai are the AI-training opt-outs)")
    g.add_argument("--max-bytes", type=int, default=d.max_bytes, help="largest response body accepted, bytes")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="largest image accepted, width x height from its header, before decoding "
                        "(decompression bombs); default = Pillow's MAX_IMAGE_PIXELS")
    g.add_argument("--content-types", type=_csv, default=list(DEFAULT_CONTENT_TYPES), metavar="LIST",
                   help="accepted Content-Type values, comma-separated; type/* wildcards; a response "
                        "without Content-Type is accepted")
    g.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="wall-clock deadline of one image request: connect, headers, every redirect and "
                        "the body (a server that trickles bytes fails as too_slow)")

    g = parser.add_argument_group("runner")
    g.add_argument("--runner", default="local",
                   help="local = the planning in memory, then img2dataset's multiprocessing distributor "
                        "on this machine; a Beam runner name (DirectRunner, DataflowRunner, ...) = "
                        "pipelines/download.py: the planning as a Beam shuffle, then one element per "
                        "shard. Other --options go to Beam")
    g.add_argument("--workers", type=int, default=1, help="DirectRunner only: worker processes")
    g.add_argument("--verbose", action="store_true",
                   help="show img2dataset's own output (default: it goes to IMAGES/_wit/img2dataset.log)")


def options_from_args(args):
    from wit_builder.download import DownloadOptions
    return DownloadOptions(
        image_size=args.image_size, resize_mode=args.resize_mode,
        resize_only_if_bigger=args.resize_only_if_bigger, encode_format=args.encode_format,
        encode_quality=args.encode_quality, processes=args.processes, threads=args.threads,
        timeout=args.timeout, retries=args.retries, max_shard_retry=args.max_shard_retry,
        user_agent_token=args.user_agent_token,
        disallowed_header_directives=list(args.disallowed_header_directives),
        allow_private_networks=args.allow_private_networks, allowed_endpoints=list(args.allowed_endpoint),
        resolve=dict(args.resolve), max_bytes=args.max_bytes, max_pixels=args.max_pixels,
        content_types=list(args.content_types), user_agent=args.user_agent, max_seconds=args.max_seconds,
        samples_per_shard=args.samples_per_shard, url_col=args.url_col, caption_col=args.caption_col,
        min_image_size=args.min_image_size, max_aspect_ratio=args.max_aspect_ratio,
        output_format=args.output_format)


def run(args) -> int:
    from pipelines import download
    from wit_builder.download import DownloadConfig, format_summary
    opts = options_from_args(args)
    if not opts.disallowed_header_directives:
        print("wit download: warning: --disallowed-header-directives is empty: X-Robots-Tag opt-outs "
              "are NOT honoured", file=sys.stderr)
    if opts.allow_private_networks:
        print("wit download: warning: --allow-private-networks: the SSRF address check is off",
              file=sys.stderr)
    if args.beam.runner == "local" and args.beam.args:
        raise WitError(f"unknown option(s) {list(args.beam.args)} (Beam options need a Beam --runner)")
    summary = download.run(DownloadConfig(args.pairs, args.out, opts), args.beam, quiet=not args.verbose)
    print(format_summary(summary))
    check_outcome(summary, args.out, args.warn_skip_share)
    return 1 if summary.get("incomplete_shards") else 0


def check_outcome(summary: dict, out: str, warn_share: float) -> None:
    """Warn when many downloads failed; an error when none succeeded."""
    from pipelines.cli.checks import nothing_usable, top, warn_skipped
    total, ok = int(summary.get("samples", 0)), int(summary.get("success", 0))
    errors = summary.get("by_error_kind") or {}
    warn_skipped("download", total - ok, total, warn_share, "images", "failed: " + top(errors))
    if total and not ok:
        raise nothing_usable(f"0 of {total:,} images downloaded (failed: {top(errors)})",
                             f"{out.rstrip('/')}/_wit/summary.json")
