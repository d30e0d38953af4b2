"""CLIP tokenizer: fast path == pure-Python reference, hand-worked ids, cleaning, truncation."""
import gzip
import random

import pytest
import torch

from trainer.tokenizer import (EOT, OPENAI_NUM_MERGES, ReferenceBPE, Tokenizer, _clean_fast,
                               bytes_to_unicode, clean_text, read_merges, train_merges)
from wit_builder.common import WitError

WORDS = ("a photo of the cat dog on in with and small large red blue green house tree sky sunset "
         "beach mountain river city street car people man woman child playing running diagram "
         "map painting portrait drawing logo flower bird").split()
UNICODE = ("café naïve résumé Ångström straße ſchön İstanbul ǅemal ﬁne ＦＵＬＬ 東京タワー 北京 "
           "서울 Москва Ελλάδα العربية हिन्दी ไทย 😀🐱‍👤 👍🏽 ①②③ ½ ٣٤ 𝔘𝔫𝔦 e\u0301 \u00a0nbsp "
           "it's I'LL WE'RE they'VE don't o'clock 'quoted' 3.14 1,000,000 #hashtag @user "
           "&amp; &lt;b&gt; &amp;amp; &#39; tab\there new\nline \u2028 \x1c\x1d ctrl\x07 "
           "Ã©mojibake â€™ ÐŸÑ€Ð¸").split(" ")


def _corpus(n, seed):
    rng = random.Random(seed)
    pool = WORDS * 3 + UNICODE
    texts = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.6:
            texts.append(" ".join(rng.choice(pool) for _ in range(rng.randint(0, 25))))
        elif kind < 0.8:  # random code points across all planes (no surrogates)
            cps = [rng.choice([rng.randint(32, 0x2FF), rng.randint(0x300, 0xD7FF),
                               rng.randint(0xE000, 0x10FFFF), rng.randint(0, 31)])
                   for _ in range(rng.randint(1, 30))]
            texts.append("".join(map(chr, cps)))
        else:  # random printable ASCII including punctuation and apostrophes
            texts.append("".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, 60))))
    return texts


@pytest.fixture(scope="module")
def merges_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "merges.txt"
    return train_merges(_corpus(3000, 1) + [" ".join(WORDS)] * 50, 2000, str(path))


def test_fast_equals_reference_on_random_unicode_corpus(merges_path):
    tok = Tokenizer.from_merges(merges_path)
    ref = ReferenceBPE(read_merges(merges_path), cache=False)
    assert tok.vocab_size == ref.vocab_size
    texts = _corpus(2500, 7)
    fast = tok.encode_batch(texts)
    for text, ids in zip(texts, fast):
        assert ids == ref.encode(text), text
    assert torch.equal(tok(texts[:300]), ref(texts[:300]))
    # the BPE actually merged something on these texts
    assert sum(len(i) for i in fast) < sum(len(clean_text(t).encode()) for t in texts)


def test_fast_cleaning_equals_ftfy_cleaning():
    for text in _corpus(2000, 3) + UNICODE + ["\x1b[31mred\x1b[0m", "a &amp b", "x\x7fy"]:
        assert _clean_fast(text) == clean_text(text), repr(text)


def _write(tmp_path, lines, gz=False):
    text = '"bpe_simple_vocab_16e6.txt#version: 0.2\n' + "\n".join(lines) + "\n"
    path = tmp_path / ("m.txt.gz" if gz else "m.txt")
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    return str(path)


def test_hand_worked_ids(tmp_path):
    # byte symbols: '!'..'~' are ids 0..93, so 'a' = 97 - 33 = 64, 'h' = 71; "x</w>" = 256 + id(x)
    tok = Tokenizer.from_merges(_write(tmp_path, ["h e", "l l", "he ll", "hell o</w>", "a a"], gz=True))
    assert tok.vocab_size == 512 + 5 + 2
    assert (tok.sot_token_id, tok.eot_token_id) == (517, 518)
    row = tok(["Hello  HELLO!"])[0]
    assert row[:5].tolist() == [517, 515, 515, 256, 518] and row[5:].eq(0).all()
    assert tok.encode("aaa") == [516, 256 + 64]           # lowest rank, left to right
    assert tok.encode("aaaa") == [516, 64, 256 + 64]      # 'a a' merges both non-final pairs
    assert tok.encode("é") == [127, 256 + 102]            # UTF-8 C3 A9 through the byte table
    assert tok.encode("it's") == [72, 256 + 83, 6, 256 + 82]  # it | 's  ("'" = 39 - 33 = 6)
    assert tok.decode(tok.encode("Hello it's é")) == "hello it 's é "
    ref = ReferenceBPE(read_merges(_write(tmp_path, ["h e", "l l", "he ll", "hell o</w>", "a a"])))
    assert ref.encode("Hello aaaa é") == tok.encode("Hello aaaa é")


def test_merge_order_matters(tmp_path):
    tok = Tokenizer.from_merges(_write(tmp_path, ["a a</w>", "a a"]))
    # 'a a</w>' (rank 0) applies first: a + aa</w>; then no ranked pair is left
    assert tok.encode("aaa") == [64, 512]
    # 'a a' (rank 0) first: aa + a</w>
    tok2 = Tokenizer.from_merges(_write(tmp_path, ["a a", "a a</w>"]))
    assert tok2.encode("aaa") == [512, 256 + 64]


def test_special_tokens_html_empty_truncation(merges_path):
    tok = Tokenizer.from_merges(merges_path)
    assert tok.encode("") == [] and tok.encode("   \n\t ") == []
    empty = tok([""])[0]
    assert empty[:2].tolist() == [tok.sot_token_id, tok.eot_token_id] and empty[2:].eq(0).all()
    assert tok.encode("&amp;amp; &lt;b&gt;") == tok.encode("& <b>")  # unescaped twice
    assert tok.encode("Ｆｕｌｌ ﬁne") == tok.encode("full fine")    # ftfy width / ligatures
    assert tok.encode("A  B\n\tC") == tok.encode("a b c")
    # a literal end-of-text marker in text is the special id, as CLIP's regex makes it
    assert tok.eot_token_id in tok.encode("x <|endoftext|> y")
    long = " ".join(["photo"] * 200)
    row = tok([long, "short"], context_length=77)
    assert row.shape == (2, 77) and row.dtype == torch.long
    assert row[0, 0] == tok.sot_token_id and row[0, -1] == tok.eot_token_id
    assert (row[0] != 0).all()
    assert row[0, 1:76].tolist() == (tok.encode(long))[:75]
    assert tok(long, context_length=10).shape == (1, 10)


def test_max_merges_and_bad_files(tmp_path):
    lines = [f"{chr(97 + i)} {chr(97 + i)}" for i in range(26)]
    assert Tokenizer.from_merges(_write(tmp_path, lines), max_merges=10).vocab_size == 512 + 10 + 2
    # OpenAI's file: the first 48,894 merges -> sot/eot 49406/49407
    assert OPENAI_NUM_MERGES + 512 == 49406
    with pytest.raises(WitError, match="two space-separated"):
        Tokenizer.from_merges(_write(tmp_path, ["a b c"]))
    with pytest.raises(WitError, match="not found"):
        Tokenizer.from_merges(str(tmp_path / "missing.txt"))
    assert len(set(bytes_to_unicode().values())) == 256


def test_train_merges_format_and_effect(tmp_path):
    caps = ["a photograph of a golden retriever"] * 30 + ["diagram of a steam engine"] * 30
    out = train_merges(caps, 200, str(tmp_path / "m.txt"))
    lines = open(out, encoding="utf-8").read().splitlines()
    assert lines[0].startswith("#version")
    assert all(len(line.split(" ")) == 2 for line in lines[1:])
    tok = Tokenizer.from_merges(out)
    assert tok.encode("photograph") == [tok.encoder["photograph</w>"]]
    assert tok.decode(tok.encode("Golden Retriever")) == "golden retriever "
    with pytest.raises(WitError):
        train_merges([], 10, str(tmp_path / "empty.txt"))


def test_tokenizer_cli_reads_tar_parquet_txt(tmp_path):
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from wit_builder.cli import main
    with tarfile.open(tmp_path / "00000.tar", "w") as tf:
        for i in range(40):
            data = b"a zebra grazing on savanna grass"
            info = tarfile.TarInfo(f"{i:09d}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"text": ["orchestra concert hall"] * 40}), tmp_path / "p.parquet")
    (tmp_path / "c.txt").write_text("lighthouse on a cliff\n" * 40)
    out = tmp_path / "merges.txt.gz"
    spec = f"{tmp_path}/{{00000..00000}}.tar::{tmp_path}/p.parquet::{tmp_path}/c.txt"
    assert main(["tokenizer", "train", "--captions", spec, "--out", str(out),
                 "--num-merges", "300"]) == 0
    tok = Tokenizer.from_merges(str(out))
    for word in ("zebra", "orchestra", "lighthouse"):
        assert tok.encode(word) == [tok.encoder[word + "</w>"]]
    assert main(["tokenizer", "train", "--captions", str(tmp_path / "nope.tar"),
                 "--out", str(out)]) == 2
