"""Dataset names read as words, to pick a hyper-parameter set (`tinykg.train.run.dataset_key`,
`tinykg.train.topk.topk_dataset_key`). A module of its own: the top-K stack must not import the CTR one."""

from __future__ import annotations

import re


def name_words(name: str) -> list[str]:
    """A dataset name's words, lower case: ``"Book-Crossing_v2"`` -> ``["book", "crossing", "v2"]``."""
    return [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]


def is_lastfm_name(name: str) -> bool:
    """A word starting with ``lastfm`` (``lastfm2k``), ``last`` followed by one starting with ``fm``
    (``last.fm``, ``last-fm-1k``), or the word ``music`` (KGCN's name for it; not ``musical``)."""
    words = name_words(name)
    return (any(word.startswith("lastfm") for word in words) or "music" in words
            or any(a == "last" and b.startswith("fm") for a, b in zip(words, words[1:])))


def is_book_crossing_name(name: str) -> bool:
    """A word starting with ``book`` (``books``, ``bookcrossing2``; not ``facebook``) or the word ``bx``."""
    words = name_words(name)
    return any(word.startswith("book") for word in words) or "bx" in words
