"""Query matching: MetaCLIP's semantics on hand-worked cases, and the automaton against brute force."""
import random

import numpy as np
import pytest

from wit_builder.matcher import Matcher, naive_match, spacing

QUERIES = ["cat", "red car", "car", "St. Louis", "AC/DC", "dog!", "New York", "York", "a", "the cat",
           "two  spaces", ", x", "Cat", "café", "😀 face", "e-mail", "rock'n'roll", "C++", "x ,"]


@pytest.mark.parametrize("text,expected", [
    # punctuation in the text is spaced out, so words next to it still match
    ("A cat, a red car.", ["cat", "red car", "car", "a"]),
    ("cat!", ["cat"]),
    ("(cat)", []),                                 # parentheses are not in MetaCLIP's list
    ("cats", []),                                  # whole words only
    ("concatenate", []),
    # case-sensitive by default
    ("Cat", ["Cat"]),
    ("CAT", []),
    # multi-word queries and overlaps: every matching query is reported
    ("New York", ["New York", "York"]),
    ("the cat sat", ["cat", "the cat"]),
    ("New\tYork\nYork", ["New York", "York"]),     # tabs/newlines become spaces
    ("NewYork", []),
    # queries containing listed punctuation cannot match: the text side is always spaced
    ("St. Louis", []),
    ("dog!", []),
    # unlisted punctuation stays part of the word
    ("AC/DC live", ["AC/DC"]),
    ("send e-mail", ["e-mail"]),
    ("rock'n'roll", ["rock'n'roll"]),
    ("C++ code", ["C++"]),
    # a query with single spaces around listed punctuation matches only unspaced punctuation
    ("y,x", [", x"]),
    ("x,y", ["x ,"]),
    ("a, x", ["a"]),                               # " a ,  x ": two spaces after the comma
    ("x ,y", []),                                  # " x  , y "
    # double spaces are matched literally (the cleaner collapses them before matching)
    ("two  spaces", ["two  spaces"]),
    ("two spaces", []),
    # non-ASCII
    ("un café 😀 face", ["café", "😀 face"]),
    ("", []),
])
def test_hand_worked_cases(text, expected):
    want = sorted(QUERIES.index(q) for q in expected)
    m = Matcher(QUERIES)
    assert naive_match(text, QUERIES) == want
    assert m.match(text) == want
    assert m.match_lists([text]) == [want]


def test_spacing_is_metaclip_reference():
    assert spacing("a,b.c;d:e?f!g`h") == " a , b . c ; d : e ? f ! g ` h "
    assert spacing("x\ty\nz\rw") == " x y z w "


def test_case_insensitive_option():
    m = Matcher(QUERIES, case_insensitive=True)
    assert m.match("CAT") == sorted([QUERIES.index("cat"), QUERIES.index("Cat")])
    assert m.match("NEW YORK") == sorted([QUERIES.index("New York"), QUERIES.index("York")])
    texts = ["CAT", "The Cat", "RED CAR!", "new york"]
    assert m.match_lists(texts) == [naive_match(t, QUERIES, case_insensitive=True) for t in texts]


def test_batch_equals_single_with_nul_and_empty_inputs():
    m = Matcher(QUERIES)
    texts = ["a cat", "x\x00cat", "", "cat\x00", "New York"]
    assert m.match_lists(texts) == [naive_match(t, QUERIES) for t in texts]
    offsets, ids = m.match_batch([])
    assert offsets.tolist() == [0] and ids.tolist() == []
    empty = Matcher([])
    assert empty.match_lists(["a cat"]) == [[]]
    nul = Matcher(["a\x00b", "cat"])
    assert nul.match_lists(["a\x00b cat", "cat"]) == [[0, 1], [1]]


def test_duplicate_queries_all_match():
    qs = ["cat", "dog", "cat"]
    m = Matcher(qs)
    assert m.match_lists(["cat and dog", "dog"]) == [[0, 1, 2], [1]]
    assert m.match("cat") == [0, 2]


def _random_case(rng):
    """A small alphabet with punctuation and whitespace makes overlaps and edge cases frequent."""
    alphabet = list("abc ") + [",", ".", "!", "`", "\t", "\n", "-", "é", "A"]
    words = ["".join(rng.choices("abcAé-", k=rng.randint(1, 3))) for _ in range(30)]
    queries = set()
    while len(queries) < 60:
        k = rng.randint(1, 3)
        q = " ".join(rng.choices(words, k=k))
        if rng.random() < 0.1:
            q += rng.choice([",", ".", " ,", "!"])
        queries.add(q)
    queries = sorted(queries)
    texts = []
    for _ in range(400):
        if rng.random() < 0.7:
            parts = rng.choices(words, k=rng.randint(0, 8))
            seps = rng.choices([" ", " ", " ", ", ", ". ", "\t", "  ", "!"], k=len(parts))
            texts.append("".join(p + s for p, s in zip(parts, seps)).strip(" "))
        else:
            texts.append("".join(rng.choices(alphabet, k=rng.randint(0, 25))))
    return queries, texts


@pytest.mark.parametrize("seed", range(6))
def test_automaton_equals_brute_force_on_random_texts(seed):
    rng = random.Random(seed)
    queries, texts = _random_case(rng)
    for ci in (False, True):
        m = Matcher(queries, case_insensitive=ci)
        expected = [naive_match(t, queries, case_insensitive=ci) for t in texts]
        assert m.match_lists(texts) == expected
        assert [m.match(t) for t in texts] == expected
        # batch boundaries do not matter
        offsets, ids = m.match_batch(texts[:7])
        assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(7)] == expected[:7]
        assert sum(map(len, expected)) > 50       # the case is not trivially empty


def test_csr_result_shape():
    m = Matcher(["a", "b", "c"])
    offsets, ids = m.match_batch(["c b a", "x", "b"])
    assert offsets.dtype == np.int64 and ids.dtype == np.int32
    assert offsets.tolist() == [0, 3, 3, 4] and ids.tolist() == [0, 1, 2, 1]


def test_relaid_out_automaton_gives_the_same_results():
    rng = random.Random(9)
    queries, texts = _random_case(rng)
    a = Matcher(queries, relayout=False).match_lists(texts)
    assert Matcher(queries, relayout=True).match_lists(texts) == a
