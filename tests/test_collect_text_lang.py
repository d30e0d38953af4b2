"""Alt-text cleaning bounds and the two language detectors (offline, seeded, pluggable)."""
import random
import string
import subprocess
import sys
import textwrap

import pytest

from wit_builder.core import WitError
from wit_builder.langid import FastTextDetector, make_detector
from wit_builder.textclean import TextCleaner, clean_text


@pytest.mark.parametrize("raw,expected", [
    ("A tabby cat", ("A tabby cat", None)),
    ("  A\u00a0tabby \t\n cat  ", ("A tabby cat", None)),
    ("fish &amp; chips", ("fish & chips", None)),
    ("&amp;lt;b&amp;gt;", ("&lt;b&gt;", None)),                 # unescaped once, not twice
    ("CafÃ© au lait", ("Café au lait", None)),                   # mojibake fixed by ftfy
    ("don\u2019t", ("don't", None)),
    ("\x00\x01hello\x7f", ("hello", None)),
    ("", (None, "empty_text")),
    (None, (None, "empty_text")),
    ("   \t ", (None, "empty_text")),
    ("a", (None, "text_too_short")),
    ("x" * 1001, (None, "text_too_long")),
    ("x" * 1000, ("x" * 1000, None)),
])
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


def test_custom_bounds_and_cheap_guard():
    c = TextCleaner(min_chars=5, max_chars=20)
    assert c("four") == (None, "text_too_short")
    assert c("exactly five") == ("exactly five", None)
    assert c("y" * 21) == (None, "text_too_long")
    assert c(" " * 60 + "spaced out" + " " * 10) == ("spaced out", None)   # under 4*max+64 raw
    assert c(" " * 200 + "spaced out") == (None, "text_too_long")          # raw guard first


def test_ascii_fast_path_equals_ftfy():
    import ftfy
    rng = random.Random(0)
    for _ in range(3000):
        s = "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 40))).replace("&", "")
        want = " ".join(ftfy.fix_text(s, unescape_html=False).split())
        want = (want, None) if len(want) >= 2 else (None, "empty_text" if not want else "text_too_short")
        assert clean_text(s) == want, repr(s)


SAMPLE = ["a red car parked on the street", "une voiture rouge garée dans la rue",
          "ein rotes Auto parkt auf der Straße", "un coche rojo aparcado en la calle", "東京タワーの夜景"]


def test_fasttext_lid176_loads_offline_and_detects():
    code = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from wit_builder.langid import make_detector
        codes, probs = make_detector("fasttext").detect(%r)
        print(",".join(codes))
    """ % SAMPLE)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "en,fr,de,es,ja"


def test_fasttext_probabilities_and_shouting():
    det = make_detector("fasttext")
    codes, probs = det.detect(SAMPLE + ["A RED CAR PARKED ON THE STREET", "caf\udcff bar"])
    assert codes[:5] == ["en", "fr", "de", "es", "ja"]
    assert all(0.5 < p <= 1.0 for p in probs[:5])
    assert codes[5] == "en"                           # upper case is lower-cased first
    assert isinstance(codes[6], str) and 0 <= probs[6] <= 1  # lone surrogate does not crash


def test_langdetect_is_seeded_and_order_independent():
    texts = SAMPLE * 3
    a = make_detector("langdetect", seed=0).detect(texts)
    b = make_detector("langdetect", seed=0).detect(texts[::-1])
    assert a[0] == b[0][::-1] and a[1] == b[1][::-1]
    assert a[0][:4] == ["en", "fr", "de", "es"]
    codes, probs = make_detector("langdetect").detect(["12345", "東京タワーの夜景"])
    assert codes == ["und", "ja"] and probs[0] == 0.0


def test_detector_specs(tmp_path):
    assert make_detector("none").detect(["x", "y"]) == (["und", "und"], [0.0, 0.0])
    with pytest.raises(WitError, match="unknown language detector"):
        make_detector("cld3")
    with pytest.raises(WitError, match="not found"):
        make_detector("fasttext:" + str(tmp_path / "missing.bin"))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a model")
    with pytest.raises(WitError, match="not a fastText model"):
        make_detector(f"fasttext:{bad}")
    assert isinstance(make_detector("fasttext"), FastTextDetector)
