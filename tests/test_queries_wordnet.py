"""WordNet: the offline loader (Debian's files + the lexnames table), the online fallback, the
error when neither works, and the query list's WordNet part on the real WordNet 3.0."""
import gzip
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from queries import wordnet as wn
from wit_builder.core import WitError

DEBIAN = Path("/usr/share/wordnet")  # Debian's wordnet-base + wordnet-sense-index (.ci/run installs them)
MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
SS_TYPE = {"n": 1, "v": 2, "a": 3, "s": 3, "r": 4}
# MetaCLIP's WordNet part size (facebookresearch/MetaCLIP, README / build_metadata.py)
METACLIP_WORDNET = 86_654


@pytest.fixture(scope="session")
def wordnet_cache(tmp_path_factory):
    assert (DEBIAN / "data.noun").is_file(), "WordNet 3.0 missing: apt-get install wordnet-base wordnet-sense-index"
    return tmp_path_factory.mktemp("wit-cache") / "nltk_data"


@pytest.fixture(scope="session")
def root(wordnet_cache):
    return wn.wordnet_root(cache_dir=wordnet_cache, allow_download=False)  # finds /usr/share/wordnet


def _data_lines(pos):
    with open(DEBIAN / f"data.{pos}", encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("  "):
                yield line.split(" ")


def test_lexnames_table_agrees_with_the_data_files():
    assert [n for n, _, _ in wn.LEXNAMES] == list(range(45))
    lines = wn.lexnames_text().splitlines()
    assert len(lines) == 45 and lines[6] == "06\tnoun.artifact\t1" and lines[44] == "44\tadj.ppl\t3"
    for _, name, cat in wn.LEXNAMES:
        assert CATEGORY[name.split(".")[0]] == cat
    used = set()
    for pos in wn.POS_FILES:
        for fields in _data_lines(pos):
            lexfile, ss_type = int(fields[1]), fields[2]
            used.add(lexfile)
            assert wn.LEXNAMES[lexfile][2] == SS_TYPE[ss_type], fields[:4]
    assert used == set(range(45))


@pytest.mark.skipif(not MAN_PAGE.is_file(), reason="lexnames(5WN) man page not installed (man pages excluded)")
def test_lexnames_table_matches_the_man_page():
    rows = []
    for line in gzip.open(MAN_PAGE, "rt"):
        m = re.match(r"^(\d\d)\t(\S+)\s*\t", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), CATEGORY[m.group(2).split(".")[0]]))
    assert tuple(rows) == wn.LEXNAMES


def test_wordnet_part_on_wordnet_30(root):
    assert wn.wordnet_version(root) == "3.0"
    part = wn.wordnet_part(root)
    # within 0.5% of MetaCLIP's 86,654 (measured: 86,671)
    assert abs(len(part) - METACLIP_WORDNET) / METACLIP_WORDNET < 0.005
    assert len(part) == 86_671
    assert all(str(i) in part for i in range(100))
    # independent count from the data files: first word of each synset, lower-cased, marker dropped
    heads = Counter()
    first_dot = set()
    for pos in wn.POS_FILES:
        for fields in _data_lines(pos):
            word = re.sub(r"\(.*\)$", "", fields[4]).lower()
            heads[word.replace("_", " ")] += 1
            first_dot.add(word.split(".")[0].replace("_", " "))
    assert sum(heads.values()) == 117_659  # WordNet 3.0's synsets
    assert {k: v for k, v in part.items() if v} == dict(heads)
    assert part["car"] == 4 and part["new york"] == 3 and part["ph.d."] == 1 and part[".22 caliber"] == 1
    # MetaCLIP cut names at the FIRST dot ("a.d.n.01" -> "a", ".22-caliber" -> ""), dropped the empty
    # string and added "0".."99": that rule reproduces its 86,654 exactly
    metaclip = (first_dot - {""}) | {str(i) for i in range(100)}
    assert len(metaclip) == METACLIP_WORDNET


def test_nltk_reads_the_assembled_folder(root, wordnet_cache):
    folder = Path(str(root))
    assert (folder / "lexnames").read_text() == wn.lexnames_text()
    assert not any(p.is_symlink() for p in folder.iterdir())
    assert folder == wordnet_cache / "corpora" / "wordnet"
    reader = wn.load_wordnet(cache_dir=wordnet_cache, allow_download=False)
    assert reader.get_version() == "3.0"
    assert reader.synset("dog.n.01").lexname() == "noun.animal"
    assert reader.synset("run.v.01").lexname() == "verb.motion"
    assert reader.synset("car.n.01").lemma_names()[:2] == ["car", "auto"]
    # the fast head-name reader agrees with NLTK's synset names: all adverbs, samples of the rest
    nltk_heads = Counter(s.name().rsplit(".", 2)[0].replace("_", " ") for s in reader.all_synsets("r"))
    assert nltk_heads == wn.synset_head_names(root, ["adv"])
    rng = random.Random(0)
    for pos, file in (("n", "noun"), ("v", "verb"), ("a", "adj")):
        sample = rng.sample(list(_data_lines(file)), 300)
        for fields in sample:
            synset = reader.synset_from_pos_and_offset(pos, int(fields[0]))
            assert synset.name().rsplit(".", 2)[0] == re.sub(r"\(.*\)$", "", fields[4]).lower()


def _offline(monkeypatch, tmp_path):
    import nltk
    monkeypatch.setattr(wn, "SYSTEM_DIRS", ())
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    monkeypatch.delenv("WNHOME", raising=False)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "nltk-empty")])
    return nltk


def test_neither_offline_nor_online_is_a_clear_error(monkeypatch, tmp_path):
    nltk = _offline(monkeypatch, tmp_path)
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(nltk, "download", no_network)
    with pytest.raises(WitError) as err:
        wn.wordnet_root(cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert calls and "apt-get install wordnet-base wordnet-sense-index" in msg and "nltk.downloader" in msg
    assert "Network is unreachable" in msg
    with pytest.raises(WitError, match="downloading is off"):
        wn.wordnet_root(cache_dir=tmp_path / "cache", allow_download=False)
    with pytest.raises(WitError, match="not a WordNet dict folder"):
        wn.wordnet_root(str(tmp_path), cache_dir=tmp_path / "cache")
    # an explicit dict folder works even when nothing else does
    explicit = wn.wordnet_root(str(DEBIAN), cache_dir=tmp_path / "cache", allow_download=False)
    assert (Path(str(explicit)) / "lexnames").read_text() == wn.lexnames_text()


def test_online_path_uses_nltks_downloader(monkeypatch, tmp_path):
    nltk = _offline(monkeypatch, tmp_path)
    calls = []

    def fake_download(package, download_dir=None, **kwargs):
        # what NLTK's downloader leaves behind: DIR/corpora/wordnet/ with the database and lexnames
        calls.append((package, download_dir))
        target = Path(download_dir) / "corpora" / "wordnet"
        target.mkdir(parents=True)
        for name in wn.REQUIRED:
            shutil.copyfile(DEBIAN / name, target / name)
        (target / "lexnames").write_text(wn.lexnames_text())
        return True

    monkeypatch.setattr(nltk, "download", fake_download)
    root = wn.wordnet_root(cache_dir=tmp_path / "cache")
    assert calls == [("wordnet", str(tmp_path / "cache"))]
    assert os.path.samefile(str(root), tmp_path / "cache" / "corpora" / "wordnet")
    assert len(wn.wordnet_part(root)) == 86_671
