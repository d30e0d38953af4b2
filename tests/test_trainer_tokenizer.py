"""CLIP tokenizer: fast path == pure-Python reference, hand-worked ids, cleaning, truncation."""
import gzip
import random

import pytest
import torch

from trainer.pretokenize import _clean_fast, _fix_text_fast, _is_bad
from trainer.tokenizer import (OPENAI_NUM_MERGES, ReferenceBPE, Tokenizer, bytes_to_unicode,
                               clean_text, read_merges, train_merges)
from wit_builder.core import WitError

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


# --- the fast cleaning path against full ftfy, on text ftfy does change ------------------------
MOJI_SOURCES = ("café naïve Zürich “quoted” it’s — … ½ © ® € 10 °C Москва Ελλάδα 東京 😀 ß ñ à "
                "São Paulo Ångström résumé œuvre × ± ² µ ¿qué? ¡sí! «guillemets» ‹x› • ™ §2 "
                "¶").split(" ")
CODECS = ("latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250",
          "sloppy-windows-1253", "sloppy-windows-1254", "sloppy-windows-1257", "iso-8859-2",
          "macroman", "cp437")
ENTITIES = ("&amp;", "&amp;amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x2019;", "&#8217;", "&eacute;",
            "&EACUTE;", "&Eacute;", "&nbsp;", "&hellip;", "&#150;", "&#x80;", "&#xD800;",
            "&#0;", "&#28;", "&SZLIG;", "&ntilde;", "&NTILDE;", "&amp", "&notit;", "&#12345678;",
            "&fjlig;", "&Jscr;", "&lt;", "<", ">", "&#x1F600;", "&#xFB01;")
ODD = ("\r\n", "\r", "\n", "\u2028", "\u2029", "\x85", "\x1b[1m", "\x00", "\x07", "\ufeff",
       "\u200b", "\u206a", "\ud83d", "\ude00", "\ud83d\ude00", "\x80", "\x9d", "ﬁ", "Ｗｉｄｅ",
       "ｶﾀｶﾅ", "\u3000", "e\u0301", "A\u030a", "\u1e9b\u0323", "\u2018x\u2019", "\u201cx\u201d",
       "\u02bc", "\u00a0", "\t", "\x0b", "\x0c", "\x1c", "\x1f", " \u00a0 ", "ǅ", "Ĳ", "ŉ")


def _mojibake(rng):
    text = " ".join(rng.choice(MOJI_SOURCES) for _ in range(rng.randint(1, 6)))
    for _ in range(rng.choice([1, 1, 1, 2])):  # sometimes doubly mis-decoded
        try:
            text = text.encode("utf-8").decode(rng.choice(CODECS))
        except UnicodeDecodeError:
            pass
    if rng.random() < 0.3:  # the b'\xa0' -> ' ' damage ftfy's restore_byte_a0 repairs
        text = text.replace("\xa0", " ")
    return text


def _ftfy_corpus(n, seed):
    from ftfy import bad_codecs  # registers the sloppy-windows-* codecs
    assert bad_codecs
    rng = random.Random(seed)
    pools = [WORDS, UNICODE, MOJI_SOURCES, ENTITIES, ODD]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            parts.append(_mojibake(rng) if r < 0.08 else rng.choice(rng.choice(pools)))
        texts.append(rng.choice(["", " ", "\n", "<p>"]).join(parts))
    return texts


def test_fast_ftfy_equals_ftfy_including_mojibake(monkeypatch):
    import ftfy
    texts = _ftfy_corpus(3000, 5) + _corpus(1500, 9) + UNICODE + list(ENTITIES) + list(ODD)
    expected = [ftfy.fix_text(t) for t in texts]
    full = []  # texts the fast path hands to ftfy itself
    real = ftfy.fix_text
    monkeypatch.setattr(ftfy, "fix_text", lambda t: full.append(t) or real(t))
    for text, want in zip(texts, expected):
        assert _fix_text_fast(text) == want, repr(text)
    changed = sum(t != e for t, e in zip(texts, expected))
    mojibake_fixed = sum(t != e for t, e in zip(full, map(real, full)))
    # meaningful: ftfy changes many of these texts, most of them on the fast path, and the
    # mojibake it repairs is there and goes to ftfy
    assert changed > 1500 and mojibake_fixed > 300 and len(full) < len(texts) / 2
    for text in texts[:1500]:
        assert _clean_fast(text) == clean_text(text), repr(text)


def _random_match(items, rng):
    """A random string matching the parsed regex ``items`` (the constructs BADNESS_RE uses)."""
    from re import _constants as c
    sample = "aZ9_ é€Ã\n\t.-"
    out = []
    for op, av in items:
        if op is c.LITERAL:
            out.append(chr(av))
        elif op is c.IN:
            members = [chr(a) if o is c.LITERAL else chr(rng.randint(*a)) if o is c.RANGE
                       else rng.choice(" \n" if a is c.CATEGORY_SPACE else "aZ9_é")
                       for o, a in av if o is not c.NEGATE]
            if av[0][0] is c.NEGATE:
                members = [ch for ch in sample if not any(
                    o is c.LITERAL and chr(a) == ch or o is c.RANGE and a[0] <= ord(ch) <= a[1]
                    for o, a in av)]
            out.append(rng.choice(members))
        elif op is c.BRANCH:
            out.append(_random_match(rng.choice(av[1]).data, rng))
        elif op is c.SUBPATTERN:
            out.append(_random_match(av[-1].data, rng))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            out.extend(_random_match(av[2].data, rng) for _ in range(rng.randint(av[0], av[0] + 1)))
        elif op is c.ANY:
            out.append(rng.choice(sample.replace("\n", "")))
        else:
            assert op is c.AT, op
    return "".join(out)


def test_fast_is_bad_equals_ftfy_is_bad():
    import re
    from re import _constants, _parser

    from ftfy.badness import BADNESS_RE, is_bad
    from trainer.pretokenize import _badness_windows
    finditer, span = _badness_windows()
    parsed = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    assert span == parsed.getwidth()[1] and not BADNESS_RE.flags & (re.IGNORECASE | re.MULTILINE)

    def ops(items):  # every opcode of the parsed pattern
        for op, av in items:
            yield op, av
            subs = (av[1] if op is _constants.BRANCH else [av[-1]] if op is _constants.SUBPATTERN
                    else [av[2]] if op in (_constants.MAX_REPEAT, _constants.MIN_REPEAT) else [])
            for sub in subs:
                yield from ops(sub.data)
    # windows are exact only without context-dependent constructs other than '^'
    for op, av in ops(parsed.data):
        assert op not in (_constants.ASSERT, _constants.ASSERT_NOT, _constants.GROUPREF)
        assert op is not _constants.AT or av is _constants.AT_BEGINNING
    required = {m.group() for m in finditer("".join(map(chr, range(0x10000))))}
    assert 50 < len(required) < 1000
    rng = random.Random(2)
    near = [chr(c) for c in range(0x80, 0x500)] + [chr(c) for c in range(0x2000, 0x2600)]
    pool = sorted(required) + near + list("abcxyzAZ .,?!'\n\t") + list("ÂÃÎÐØÙà√≈‚вЂβ€ā")
    hits = 0
    for i in range(30000):
        # random text, or a random match of one of BADNESS_RE's branches in random context
        if i % 2:
            text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 14)))
        else:
            text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 4)))
            text += _random_match(parsed.data, rng)
            text += "".join(rng.choice(pool) for _ in range(rng.randint(0, 4)))
        hits += is_bad(text)
        assert _is_bad(text) == is_bad(text), repr(text)
    for text in _ftfy_corpus(500, 6):
        assert _is_bad(text) == is_bad(text), repr(text)
    assert 15000 < hits < 29000


def test_cleaning_facts_over_every_code_point():
    import re

    import ftfy
    import regex

    from trainer.pretokenize import _char_class, _fixer_chars, _unsafe_chars
    every = "".join(map(chr, range(0x110000)))
    # each of ftfy's character fixers changes no character outside its set
    for name, chars in _fixer_chars().items():
        others = re.sub(_char_class(chars), "", every)
        assert len(others) == len(every) - len(chars) and ftfy.FIXERS[name](others) == others, name
    # ...and they are applied in the order of ftfy's own loop
    import inspect
    source = inspect.getsource(ftfy.fix_and_explain)
    assert sorted(_fixer_chars(), key=lambda n: source.index(f'"{n}"')) == list(_fixer_chars())
    unsafe = _unsafe_chars()
    assert "\r" in unsafe and "\u2019" in unsafe and "ﬁ" in unsafe and "é" not in unsafe
    # str.isspace() vs regex's \s differ only on U+001C..U+001F (the cleaning relies on it)
    spaces = {c for c in every if c.isspace()}
    assert spaces ^ set(regex.findall(r"\s", every)) == set("\x1c\x1d\x1e\x1f")
    # lower-casing neither creates nor removes whitespace (stdlib re's \s is str.isspace)
    assert set(re.findall(r"\s", every)) == spaces and all(c.lower() == c for c in spaces)
    assert re.findall(r"\s", every.lower()) == re.findall(r"\s", every)


def test_cleaning_edge_cases():
    cases = ["ΟΔΟΣ\u00a0\u2003ΑΘΗΝΑ", "ΟΔΟΣ\nΑΘΗΝΑ", "ΑΣ Β", "Σ", "ΑΣ\x1cΒ", "a\x1c b", "\x1f",
             "x\r\ny", "&lt;p&gt;caf&eacute;\n&amp;", "<b>\n&amp;\n&eacute;", "&amp;\n<i>",
             "İstanbul", "ǅemal", "ﬃ", "", "   ", "\n\n", "A" * 5000, "&" * 50, "Ã© " * 300,
             "a\u0301\u0302b", "\ud800x", "\x1b[31;1mred\x1b[0m", "x" + "\n" * 3 + "y"]
    for text in cases:
        assert _clean_fast(text) == clean_text(text), repr(text)


def test_fast_equals_reference_adversarial(merges_path):
    tok = Tokenizer.from_merges(merges_path, max_merges=None)
    ref = ReferenceBPE(read_merges(merges_path), max_merges=None, cache=False)
    texts = _ftfy_corpus(600, 8) + [
        "a<|endoftext|>b", "<|startoftext|><|endoftext|>", "<|ENDOFTEXT|> x", "<|end of|>",
        "it's IT'S o'clock '' 's 'S's", "don't!!!'ll", "'", "x'" * 40, "12345 1.5e10 ٣٤ ½",
        "photo " * 100, "photo " * 75, "a " * 74, "a " * 75, "a " * 76, "ﬁne Ｆｕｌｌ ŉ"]
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]
    for ctx in (2, 3, 77, 80):
        assert torch.equal(tok(texts, context_length=ctx), ref(texts, context_length=ctx))
    assert tok([]).shape == (0, 77)


def test_word_cache_bound_and_pickle(merges_path):
    import pickle
    ref = ReferenceBPE(read_merges(merges_path), max_merges=None)
    texts = _corpus(400, 12)
    tok = Tokenizer.from_merges(merges_path, max_merges=None)
    tok.cache_size = 300
    for start in range(0, 400, 50):  # batches overflow the bound several times
        batch = texts[start:start + 50]
        assert torch.equal(tok(batch), ref(batch))
        assert len(tok._cache) <= max(300, len({w for t in batch for w in _clean_fast(t).split()}))
    long_word = "x" * 65
    assert tok.encode(f"{long_word} photo") == ref.encode(f"{long_word} photo")
    assert long_word not in tok._cache and "photo" in tok._cache
    size = len(pickle.dumps(tok))
    tok(_corpus(500, 13))  # a warm cache is not pickled (data-loader workers)
    clone = pickle.loads(pickle.dumps(tok))
    assert len(pickle.dumps(tok)) == size and clone._cache == {}
    assert torch.equal(clone(texts), ref(texts))


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

    from pipelines.cli import main
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


def test_caption_globs_take_any_file_and_folders_prefer_tars(tmp_path):
    from trainer.captions import expand_paths, iter_captions
    (tmp_path / "caps").mkdir()
    (tmp_path / "caps" / "a.tsv").write_text("a red circle\nthe blue square\n")
    (tmp_path / "caps" / "b.txt").write_text("green arrow\n")
    assert list(iter_captions(str(tmp_path / "caps" / "*.tsv"))) == ["a red circle", "the blue square"]
    assert expand_paths(str(tmp_path / "caps")) == [str(tmp_path / "caps" / "b.txt")]   # no .tar/.parquet
