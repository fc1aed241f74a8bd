"""Dataset names read as words, to pick a hyper-parameter set (`tinykg.train.run.dataset_key`,
`tinykg.train.topk.topk_dataset_key`). A module of its own: the top-K stack must not import the CTR one."""

from __future__ import annotations

import re


def name_words(name: str) -> list[str]:
    """A dataset name's words, lower case: ``"Book-Crossing_v2"`` -> ``["book", "crossing", "v2"]``."""
    return [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]


def is_lastfm_name(name: str) -> bool:
    """``lastfm``, ``last.fm``, ``last-fm`` or ``music`` (KGCN's name for it) as words of the name."""
    words = name_words(name)
    return "lastfm" in words or "music" in words or any(a == "last" and b == "fm" for a, b in zip(words, words[1:]))
