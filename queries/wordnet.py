"""WordNet 3.0 for the query list, offline or online.

NLTK reads WordNet from an "NLTK data" folder (``<root>/corpora/wordnet/``). This module gets one
in this order and caches it under ``$WIT_CACHE/nltk_data`` (default ``~/.cache/wit/nltk_data``):

1. an already assembled cache folder;
2. **offline**: a WordNet 3.0 ``dict`` folder in Princeton's database format, e.g. Debian's
   ``wordnet-base`` + ``wordnet-sense-index`` packages (``/usr/share/wordnet``), ``$WNSEARCHDIR``
   or ``$WNHOME/dict``. Its files are copied into the cache folder and the ``lexnames`` table,
   which Debian does not ship but NLTK needs, is written from the lexnames(5WN) manual page;
3. NLTK's own data folders (``nltk.data.path``), if WordNet was downloaded there before;
4. **online**: ``nltk.download("wordnet")`` into the cache folder.

If none works, :class:`WitError` names both ways to get it.

The query list only needs each synset's head name, so :func:`synset_head_names` reads the
``data.*`` files directly (wndb(5WN) format) instead of building NLTK's full object graph, which
takes tens of seconds; :func:`load_wordnet` returns NLTK's reader for everything else.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

from wit_builder.core import WitError

__all__ = ["LEXNAMES", "lexnames_text", "wordnet_root", "load_wordnet", "synset_head_names",
           "wordnet_part", "wordnet_version", "default_cache_dir", "SYSTEM_DIRS"]

# The 45 lexicographer files of WordNet 3.0: (file number, name, syntactic category), where the
# category is 1 NOUN, 2 VERB, 3 ADJECTIVE, 4 ADVERB. Source: the lexnames(5WN) manual page of
# WordNet 3.0 ("Dec 2006"), shipped by Debian's wordnet-base as /usr/share/man/man5/lexnames.5WN.gz.
LEXNAMES: tuple[tuple[int, str, int], ...] = (
    (0, "adj.all", 3), (1, "adj.pert", 3), (2, "adv.all", 4), (3, "noun.Tops", 1),
    (4, "noun.act", 1), (5, "noun.animal", 1), (6, "noun.artifact", 1), (7, "noun.attribute", 1),
    (8, "noun.body", 1), (9, "noun.cognition", 1), (10, "noun.communication", 1),
    (11, "noun.event", 1), (12, "noun.feeling", 1), (13, "noun.food", 1), (14, "noun.group", 1),
    (15, "noun.location", 1), (16, "noun.motive", 1), (17, "noun.object", 1),
    (18, "noun.person", 1), (19, "noun.phenomenon", 1), (20, "noun.plant", 1),
    (21, "noun.possession", 1), (22, "noun.process", 1), (23, "noun.quantity", 1),
    (24, "noun.relation", 1), (25, "noun.shape", 1), (26, "noun.state", 1),
    (27, "noun.substance", 1), (28, "noun.time", 1), (29, "verb.body", 2), (30, "verb.change", 2),
    (31, "verb.cognition", 2), (32, "verb.communication", 2), (33, "verb.competition", 2),
    (34, "verb.consumption", 2), (35, "verb.contact", 2), (36, "verb.creation", 2),
    (37, "verb.emotion", 2), (38, "verb.motion", 2), (39, "verb.perception", 2),
    (40, "verb.possession", 2), (41, "verb.social", 2), (42, "verb.stative", 2),
    (43, "verb.weather", 2), (44, "adj.ppl", 3),
)

POS_FILES = ("noun", "verb", "adj", "adv")
# files NLTK's WordNetCorpusReader opens when it is built or used for the query list
REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in POS_FILES) + tuple(
    f"{pos}.exc" for pos in POS_FILES)
OPTIONAL = ("cntlist.rev", "index.sense")  # lemma counts and sense keys; copied when present
SYSTEM_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/local/share/wordnet",
               "/opt/homebrew/share/wordnet")
MARKER = ".wit-assembled"

HOW_TO = ("WordNet 3.0 is needed for the query list's WordNet part. Either install it offline "
          "(Debian/Ubuntu: `apt-get install wordnet-base wordnet-sense-index`, or point "
          "--wordnet-dir / $WNSEARCHDIR at a WordNet 3.0 dict folder), or go online once so that "
          "NLTK's downloader can fetch it (`python -m nltk.downloader -d ~/.cache/wit/nltk_data "
          "wordnet`)")


def lexnames_text() -> str:
    """The ``lexnames`` file: ``NN<TAB>name<TAB>category`` per line, as lexnames(5WN) describes."""
    return "".join(f"{num:02d}\t{name}\t{cat}\n" for num, name, cat in LEXNAMES)


def default_cache_dir() -> Path:
    base = os.environ.get("WIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "wit")
    return Path(base) / "nltk_data"


def _candidate_dirs(wordnet_dir: str | None) -> list[Path]:
    dirs = []
    if wordnet_dir:
        dirs.append(Path(wordnet_dir))
    if os.environ.get("WNSEARCHDIR"):
        dirs.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        dirs.append(Path(os.environ["WNHOME"]) / "dict")
    dirs.extend(Path(d) for d in SYSTEM_DIRS)
    return dirs


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED + ("lexnames",))


def _assemble(source: Path, cache: Path) -> Path:
    """Copy a WordNet dict folder into ``cache/corpora/wordnet`` (atomically, by rename)."""
    target = cache / "corpora" / "wordnet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet.tmp-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        for name in REQUIRED + OPTIONAL:
            if (source / name).is_file():
                # copies, not symlinks: NLTK's path sandbox refuses symlinked data files
                shutil.copyfile(source / name, tmp / name)
        lexnames = source / "lexnames"
        (tmp / "lexnames").write_text(lexnames.read_text() if lexnames.is_file() else lexnames_text())
        (tmp / MARKER).write_text(f"assembled from {source}\n")
        if target.exists() and not _is_complete(target):  # left over from an interrupted run
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # another process won the race with a complete folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _nltk_find(paths: Iterable[str] | None = None):
    import nltk.data
    with contextlib.suppress(LookupError):
        return nltk.data.find("corpora/wordnet", paths=None if paths is None else list(paths))
    with contextlib.suppress(LookupError):
        return nltk.data.find("corpora/wordnet.zip/wordnet/", paths=None if paths is None else list(paths))
    return None


def _open(root, name: str):
    """Open ``name`` in a WordNet folder: a local ``Path`` or an NLTK path pointer (maybe in a zip)."""
    if isinstance(root, (str, os.PathLike)):
        return open(Path(root) / name, "rb")
    return root.join(name).open()


def _allow(root: str) -> None:
    """NLTK only opens files under its data path: make ``root`` part of it."""
    import nltk.data
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)


def wordnet_root(wordnet_dir: str | None = None, cache_dir: str | os.PathLike | None = None,
                 allow_download: bool = True):
    """Find or make an NLTK WordNet folder (``.../corpora/wordnet``): a ``Path`` for a local folder,
    an NLTK path pointer for one NLTK found itself (maybe inside a zip). NLTK is imported only
    when the offline ways fail (it takes seconds to import).

    ``wordnet_dir``: a WordNet dict folder (Princeton format) to use before the system ones.
    ``cache_dir``: the NLTK data folder to assemble/download into (default :func:`default_cache_dir`).
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    assembled = cache / "corpora" / "wordnet"
    if wordnet_dir:  # an explicit folder wins over any cache
        src = Path(wordnet_dir)
        if not all((src / n).is_file() for n in REQUIRED):
            missing = [n for n in REQUIRED if not (src / n).is_file()]
            raise WitError(f"--wordnet-dir {src} is not a WordNet dict folder (missing {', '.join(missing)})")
        tried = cache / "wit-explicit" / re.sub(r"[^A-Za-z0-9]+", "_", str(src.resolve())).strip("_")
        target = tried / "corpora" / "wordnet"
        if not _is_complete(target):
            _assemble(src, tried)
        return target
    if _is_complete(assembled):
        return assembled
    for src in _candidate_dirs(None):
        if all((src / n).is_file() for n in REQUIRED):
            try:
                _assemble(src, cache)
            except OSError as exc:
                raise WitError(f"could not assemble WordNet from {src} into {cache}: {exc}") from None
            return assembled
    found = _nltk_find()
    if found is not None:
        return found
    if allow_download:
        import nltk
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with contextlib.redirect_stdout(None):
                nltk.download("wordnet", download_dir=str(cache), quiet=True, raise_on_error=True)
        except (OSError, ValueError) as exc:  # no network, DNS failure, HTTP error...
            raise WitError(f"WordNet not found offline (looked in {', '.join(map(str, _candidate_dirs(None)))}) "
                           f"and NLTK's downloader failed ({exc}). {HOW_TO}") from None
        _allow(str(cache))
        found = _nltk_find([str(cache)])
        if found is not None:
            return found
    raise WitError(f"WordNet not found offline (looked in {', '.join(map(str, _candidate_dirs(None)))}, "
                   f"{cache}, and NLTK's data path){'' if allow_download else ' and downloading is off'}. "
                   f"{HOW_TO}")


def load_wordnet(wordnet_dir: str | None = None, cache_dir=None, allow_download: bool = True):
    """NLTK's ``WordNetCorpusReader`` on the folder from :func:`wordnet_root` (takes ~10 s)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.data import FileSystemPathPointer
    root = wordnet_root(wordnet_dir, cache_dir, allow_download)
    if isinstance(root, Path):
        # NLTK opens files only under its data path, and its reader looks itself up there by name
        # ("wordnet") to map versions: put our NLTK data folder first
        _allow(str(root.parent.parent))
        root = FileSystemPathPointer(str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we pass no OMW
        return WordNetCorpusReader(root, None)


_ADJ_MARKER = re.compile(r"\([^()]*\)$")  # syntactic marker of adjectives: (a), (p), (ip)


def synset_head_names(root, pos_files: Iterable[str] = POS_FILES) -> Counter:
    """``{head name: number of synsets}`` over all synsets of the WordNet at ``root``.

    The head name is NLTK's synset name without its ``.pos.NN`` suffix (``car.n.01`` -> ``car``):
    the synset's first word as written in the ``data.*`` file, lower-cased, adjective marker
    dropped. Underscores become spaces. Each non-comment line of ``data.noun/verb/adj/adv`` is one
    synset: ``offset lex_filenum ss_type w_cnt word lex_id ...`` (wndb(5WN)).
    """
    heads: Counter = Counter()
    for pos in pos_files:
        with _open(root, f"data.{pos}") as fh:
            for raw in fh:
                line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                if not line or line[0] == " ":  # the licence header lines start with two spaces
                    continue
                word = line.split(" ", 5)[4]
                word = _ADJ_MARKER.sub("", word).lower().replace("_", " ")
                heads[word] += 1
    return heads


def wordnet_version(root) -> str | None:
    with _open(root, "data.adj") as fh:
        for _, raw in zip(range(40), fh):
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            m = re.search(r"Word[nN]et (\d+\.\d+) Copyright", line)
            if m:
                return m.group(1)
    return None


# MetaCLIP adds the strings "0".."99" to its WordNet part (facebookresearch/MetaCLIP,
# metaclip/build_metadata.py); the issue asks for the same.
EXTRA_STRINGS = tuple(str(i) for i in range(100))


def wordnet_part(root) -> dict[str, int]:
    """The query list's WordNet part: ``{query: number of synsets with that head name}``; the
    extra strings "0".."99" get 0 unless a synset has them as head name."""
    part = dict(synset_head_names(root))
    for s in EXTRA_STRINGS:
        part.setdefault(s, 0)
    return part
