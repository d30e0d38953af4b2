"""`wit tokenizer train`: learn a CLIP-format BPE merges file from the pipeline's captions."""
from __future__ import annotations

import argparse

from pipelines.cli.helpfmt import HelpFormatter
from trainer.captions import iter_captions

DESCRIPTION = ("Learn a CLIP-format BPE merges file (version header + one merge per line, the "
               "format of OpenAI's bpe_simple_vocab_16e6.txt.gz) from captions, with CLIP's "
               "cleaning, pre-tokenisation regex, byte-level alphabet and </w> suffix.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="learn merges from captions",
                           description=DESCRIPTION,
                           formatter_class=HelpFormatter)
    train.add_argument("--captions", required=True,
                       help="caption sources: WebDataset shards ('SHARDS/{00000..00009}.tar'), "
                            "Parquet files (text/caption column), text files (one caption per "
                            "line), directories or globs; several joined with '::'")
    train.add_argument("--out", required=True,
                       help="merges file to write (.gz to gzip it: OpenCLIP's tokenizer reads "
                            "only gzip, e.g. SimpleTokenizer(bpe_path='merges.txt.gz'))")
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
