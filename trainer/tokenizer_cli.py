"""`wit tokenizer train`: learn a CLIP-format BPE merges file from the pipeline's captions."""
from __future__ import annotations

import argparse
import glob
import io
import os
import tarfile
from typing import Iterator

from wit_builder.common import WitError

DESCRIPTION = ("Learn a CLIP-format BPE merges file (version header + one merge per line, the "
               "format of OpenAI's bpe_simple_vocab_16e6.txt.gz) from captions, with CLIP's "
               "cleaning, pre-tokenisation regex, byte-level alphabet and </w> suffix.")


def expand_paths(spec: str) -> list[str]:
    """Expand ``a::b`` sources, ``{00000..00009}`` braces and globs to existing files."""
    import braceexpand
    paths: list[str] = []
    for source in spec.split("::"):
        for item in braceexpand.braceexpand(source.strip()):
            if os.path.isdir(item):
                paths.extend(sorted(glob.glob(os.path.join(item, "*.tar")))
                             or sorted(glob.glob(os.path.join(item, "*.parquet")))
                             or sorted(glob.glob(os.path.join(item, "*.txt"))))
            elif any(c in item for c in "*?["):
                paths.extend(sorted(glob.glob(item)))
            elif os.path.exists(item):
                paths.append(item)
            else:
                raise WitError(f"captions input not found: {item}")
    if not paths:
        raise WitError(f"no caption files match {spec!r}")
    return paths


def iter_captions(spec: str, column: str | None = None) -> Iterator[str]:
    """Captions from WebDataset tars (``.txt`` members), Parquet (``text``/``caption`` column)
    or text files (one caption per line)."""
    for path in expand_paths(spec):
        if path.endswith(".tar"):
            try:
                with tarfile.open(path) as tf:
                    for member in tf:
                        if member.isfile() and member.name.endswith(".txt"):
                            yield tf.extractfile(member).read().decode("utf-8", errors="replace")
            except tarfile.TarError as exc:
                raise WitError(f"{path}: not a readable tar ({exc})") from None
        elif path.endswith(".parquet"):
            import pyarrow.parquet as pq
            names = pq.read_schema(path).names
            col = column or next((c for c in ("text", "caption") if c in names), None)
            if col is None or col not in names:
                raise WitError(f"{path}: no caption column (looked for {column or 'text, caption'})")
            for value in pq.read_table(path, columns=[col]).column(col).to_pylist():
                if value:
                    yield value
        else:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip("\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="learn merges from captions",
                           description=DESCRIPTION,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--captions", required=True,
                       help="caption sources: WebDataset shards ('SHARDS/{00000..00009}.tar'), "
                            "Parquet files (text/caption column), text files (one caption per "
                            "line), directories or globs; several joined with '::'")
    train.add_argument("--out", required=True, help="merges file to write (.gz to gzip it)")
    train.add_argument("--num-merges", type=int, default=10000,
                       help="number of merges to learn (vocabulary = 512 + merges + 2; "
                            "OpenAI's CLIP uses 48894)")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="a pair must occur this often to be merged")
    train.add_argument("--column", default=None, help="Parquet caption column (default: text, caption)")


def run(args) -> int:
    from tqdm import tqdm

    from trainer.tokenizer import Tokenizer, train_merges
    captions = tqdm(iter_captions(args.captions, args.column), desc="captions", unit=" caps")
    out = train_merges(captions, args.num_merges, args.out, min_frequency=args.min_frequency)
    tok = Tokenizer.from_merges(out)
    print(f"wrote {out}: {len(tok.merges)} merges, vocabulary {tok.vocab_size} "
          f"(sot {tok.sot_token_id}, eot {tok.eot_token_id})")
    return 0
