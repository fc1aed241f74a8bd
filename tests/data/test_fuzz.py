"""Input fuzzing: hundreds of corrupted datasets and bad CLI options, never a traceback or a hang.

A seeded generator corrupts small valid datasets of every format (KGCN text and ``.npy``, raw
Last.FM, KGAT, RecBole atomic files): truncation, wrong separators and column counts, bad tokens,
huge and negative ids, empty/header-only/binary/non-UTF-8 files, line-ending and BOM mixes, files
replaced by directories, FIFOs or dangling links, and malformed ``.npy`` headers and dtypes.

Each case must either load into a dataset that passes its own validation, or raise a
:class:`DataError` whose message is one line naming a file of the dataset; ``tinykg data info`` (and
``tinykg train`` for a sample) must then exit 2 with exactly that line. Every case runs under a
time limit, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import tinykg.train.run  # noqa: F401  imported up front, so that no case's time limit pays for torch
from tinykg.cli import main
from tinykg.data import DataError, Dataset, Interactions, KnowledgeGraph, load_dataset

SEED = 20240607
CASE_SECONDS = 5
OPTION_SECONDS = 30  # a bad option may only show once the synthetic data is built and a model runs
REPO_ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------------------------
# Valid base datasets
# --------------------------------------------------------------------------------------------

KGCN = {
    "kg_final.txt": "0\t0\t4\n1\t1\t4\n2\t0\t5\n3\t1\t5\n4\t2\t6\n5\t0\t6\n",
    "ratings_final.txt": "0\t0\t1\n0\t1\t0\n1\t1\t1\n1\t2\t0\n2\t3\t1\n2\t0\t0\n3\t2\t1\n3\t3\t0\n",
}
KGAT = {
    "kg_final.txt": "0 0 4\n1 1 4\n2 0 5\n3 1 5\n4 2 6\n",
    "train.txt": "0 0 1\n1 2 3\n2 1\n3 0 2 3\n",
    "test.txt": "0 2\n1 0\n2 3\n3 1\n",
}
LASTFM = {
    "item_index2entity_id.txt": "10\t0\n20\t1\n30\t2\n40\t3\n",
    "user_artists.dat": "userID\tartistID\tweight\n7\t20\t100\n7\t99\t5\n5\t10\t3\n7\t30\t1\n5\t40\t2\n9\t20\t8\n",
    "kg.txt": "0\tr.a\tfoo\n2\tr.b\t0\nfoo\tr.a\tbar\n3\tr.c\t1\n",
}
RECBOLE = {
    "test.inter": (
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "uA\ti1\t5\t1\nuA\ti2\t2\t2\nuB\ti3\t4\t3\nuB\ti1\t1\t4\nuC\ti4\t5\t5\nuC\ti2\t4.5\t6\n"
    ),
    "test.link": "item_id:token\tentity_id:token\ni1\te1\ni3\te3\ni4\te4\ni5\te5\n",
    "test.kg": "head_id:token\trelation_id:token\ttail_id:token\ne1\tr1\tx\nx\tr2\te3\ne5\tr1\ty\ne4\tr3\te1\n",
}
BASES = {"kgcn": KGCN, "kgat": KGAT, "lastfm-raw": LASTFM, "recbole": RECBOLE}
HEADER_FILES = {"user_artists.dat", "test.inter", "test.link", "test.kg"}

# Special file-system entries a file can be replaced by (strings, so cases stay plain data).
MISSING, DIRECTORY, DANGLING, LOOP, FIFO, DEVNULL, UNREADABLE = (
    "<missing>", "<directory>", "<dangling-symlink>", "<symlink-loop>", "<fifo>", "<dev-null>", "<unreadable>",
)
SPECIALS = (MISSING, DIRECTORY, DANGLING, LOOP, FIFO, DEVNULL, UNREADABLE)


@dataclass(frozen=True)
class Case:
    """One dataset directory: file name -> bytes, or one of SPECIALS."""

    id: str
    format: str
    files: dict = field(hash=False)
    train: bool = False  # also run `tinykg train` on it


# --------------------------------------------------------------------------------------------
# Mutations (text in, bytes out; ``rng`` picks lines and columns)
# --------------------------------------------------------------------------------------------

BOM = "\ufeff"


def _data_lines(text: str, header: bool) -> list[int]:
    """Indices of the non-blank data lines of ``text.split('\\n')``."""
    lines = text.split("\n")
    return [i for i, line in enumerate(lines) if line.strip() and not (header and i == 0)]


def _edit_line(text: str, header: bool, rng: random.Random, edit) -> str:
    lines = text.split("\n")
    index = rng.choice(_data_lines(text, header))
    lines[index] = edit(lines[index])
    return "\n".join(lines)


def _replace_token(text: str, header: bool, rng: random.Random, token: str) -> str:
    def edit(line: str) -> str:
        parts = re.split(r"([\t ]+)", line)
        positions = [i for i, part in enumerate(parts) if part and not part.isspace()]
        parts[rng.choice(positions)] = token
        return "".join(parts)

    return _edit_line(text, header, rng, edit)


def _insert(text: str, rng: random.Random, piece: bytes) -> bytes:
    raw = text.encode()
    position = rng.randrange(1, len(raw))
    return raw[:position] + piece + raw[position:]


def _mix_crlf(text: str, rng: random.Random) -> str:
    return "".join(line + ("\r\n" if rng.random() < 0.5 else "\n") for line in text.rstrip("\n").split("\n"))


def _truncate_mid_line(text: str, rng: random.Random) -> str:
    lines = text.rstrip("\n").split("\n")
    cut = rng.randrange(1, len(lines))
    return "\n".join(lines[:cut]) + "\n" + lines[cut][: max(1, len(lines[cut]) // 2)]


def _shuffle_lines(text: str, rng: random.Random) -> str:
    lines = text.rstrip("\n").split("\n")
    rng.shuffle(lines)
    return "\n".join(lines) + "\n"


TEXT_MUTATIONS = {
    "truncated": lambda t, h, r: t[: r.randrange(1, len(t) - 1)],
    "truncated-mid-line": lambda t, h, r: _truncate_mid_line(t, r),
    "commas": lambda t, h, r: t.replace("\t", ",").replace(" ", ","),
    "semicolons": lambda t, h, r: t.replace("\t", ";").replace(" ", ";"),
    "pipes": lambda t, h, r: t.replace("\t", "|").replace(" ", "|"),
    "tabs-to-spaces": lambda t, h, r: t.replace("\t", " "),
    "spaces-to-tabs": lambda t, h, r: t.replace(" ", "\t"),
    "double-separators": lambda t, h, r: t.replace("\t", "\t\t").replace(" ", "  "),
    "nbsp-separator": lambda t, h, r: _edit_line(t, h, r, lambda line: re.sub(r"[\t ]", "\u00a0", line, count=1)),
    "vertical-tab-separator": lambda t, h, r: _edit_line(t, h, r, lambda line: re.sub(r"[\t ]", "\x0b", line, count=1)),
    "file-separator-char": lambda t, h, r: _edit_line(t, h, r, lambda line: re.sub(r"[\t ]", "\x1c", line, count=1)),
    "line-separator-char": lambda t, h, r: _edit_line(t, h, r, lambda line: line + "\u2028"),
    "dropped-column": lambda t, h, r: _edit_line(t, h, r, lambda line: re.sub(r"[\t ]+[^\t ]*$", "", line)),
    "extra-column": lambda t, h, r: _edit_line(t, h, r, lambda line: line + ("\t" if "\t" in line else " ") + "7"),
    "only-one-column": lambda t, h, r: _edit_line(t, h, r, lambda line: re.split(r"[\t ]", line)[0]),
    "empty": lambda t, h, r: "",
    "whitespace-only": lambda t, h, r: " \n\t\r\n\n",
    "first-line-only": lambda t, h, r: t.split("\n")[0] + "\n",
    "bom-only": lambda t, h, r: BOM,
    "bom-newline": lambda t, h, r: BOM + "\n\n",
    "bom": lambda t, h, r: BOM + t,
    "double-bom": lambda t, h, r: BOM + BOM + t,
    "bom-mid-file": lambda t, h, r: _edit_line(t, h, r, lambda line: BOM + line),
    "crlf": lambda t, h, r: t.replace("\n", "\r\n"),
    "crlf-mix": lambda t, h, r: _mix_crlf(t, r),
    "cr-only": lambda t, h, r: t.replace("\n", "\r"),
    "no-final-newline": lambda t, h, r: t.rstrip("\n"),
    "blank-lines": lambda t, h, r: t.replace("\n", "\n\n  \n", 2),
    "trailing-whitespace": lambda t, h, r: t.replace("\n", " \t\n"),
    "leading-whitespace": lambda t, h, r: "\n".join(" " + line if line else line for line in t.split("\n")),
    "duplicated": lambda t, h, r: t + t,
    "shuffled": lambda t, h, r: _shuffle_lines(t, r),
    "zero-padded": lambda t, h, r: _replace_token(t, h, r, "007"),
    "negated": lambda t, h, r: _edit_line(t, h, r, lambda line: "-" + line),
    "long-line": lambda t, h, r: t + ("\t".join(["1"] * 200_000)) + "\n",
    "many-lines": lambda t, h, r: t + "".join(t.split("\n", 1)[1] if h else t for _ in range(3_000)),
    # Bytes-level corruptions.
    "nul-byte": lambda t, h, r: _insert(t, r, b"\x00"),
    "invalid-utf8": lambda t, h, r: _insert(t, r, b"\xff\xfe"),
    "latin1-byte": lambda t, h, r: _insert(t, r, b"\xe9"),
    "overlong-utf8": lambda t, h, r: _insert(t, r, b"\xc0\xaf"),
    "lone-surrogate": lambda t, h, r: _insert(t, r, b"\xed\xa0\x80"),
    "utf16": lambda t, h, r: t.encode("utf-16"),
    "random-bytes": lambda t, h, r: r.randbytes(300),
    "binary-tail": lambda t, h, r: t.encode() + r.randbytes(64),
    "png": lambda t, h, r: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + r.randbytes(40),
    "gzip": lambda t, h, r: gzip.compress(t.encode(), mtime=0),
    "npy-content": lambda t, h, r: _npy(np.array([[0, 0, 1]], np.int64)),
}

BAD_TOKENS = {
    "empty": "", "word": "x", "float": "1.5", "float-int": "3.0", "exponent": "1e3", "hex": "0x1F",
    "binary": "0b1", "octal": "0o7", "underscore": "1_0", "plus": "+4", "negative": "-3", "minus-zero": "-0",
    "double-minus": "--1", "trailing-minus": "3-", "unicode-minus": "\u22121", "fullwidth-digit": "\uff13",
    "arabic-digit": "\u0663", "nan": "nan", "inf": "inf", "null": "null", "comma-decimal": "1,5",
    "int64-max": str(2**63 - 1), "two-pow-63": str(2**63), "two-pow-64": str(2**64), "ten-pow-30": str(10**30),
    "minus-two-pow-63": str(-(2**63)), "huge-digits": "9" * 400, "emoji": "\U0001f600", "quote": '"1"',
}


# --------------------------------------------------------------------------------------------
# .npy cases
# --------------------------------------------------------------------------------------------


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _npy_header(header: str, version: tuple[int, int] = (1, 0), body: bytes = b"") -> bytes:
    """A hand-made .npy file: magic, version, header length, header text, body."""
    length = len(header).to_bytes(2 if version[0] == 1 else 4, "little")
    return b"\x93NUMPY" + bytes(version) + length + header.encode("latin1") + body


GOOD_RATINGS = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 1], [1, 2, 0], [2, 3, 1], [2, 0, 0]], np.int64)


def _npy_cases() -> dict[str, bytes | str]:
    good = _npy(GOOD_RATINGS)
    header_length = 10 + int.from_bytes(good[8:10], "little")
    structured = np.zeros(2, dtype=[("user", "i8"), ("item", "i8"), ("label", "i8")])
    return {
        "int64": good,
        "int32": _npy(GOOD_RATINGS.astype(np.int32)),
        "uint8": _npy(GOOD_RATINGS.astype(np.uint8)),
        "int16": _npy(GOOD_RATINGS.astype(np.int16)),
        "big-endian": _npy(GOOD_RATINGS.astype(">i8")),
        "fortran-order": _npy(np.asfortranarray(GOOD_RATINGS)),
        "uint64-small": _npy(GOOD_RATINGS.astype(np.uint64)),
        "uint64-huge": _npy(np.array([[0, 0, 1], [2**64 - 1, 0, 1]], np.uint64)),
        "int64-max-item": _npy(np.array([[0, 2**63 - 1, 1]], np.int64)),
        "int64-min-user": _npy(np.array([[-(2**63), 0, 1]], np.int64)),
        "trailing-garbage": good + b"garbage after the data",
        "float64": _npy(GOOD_RATINGS.astype(np.float64)),
        "float32-nan": _npy(np.array([[0, np.nan, 1]], np.float32)),
        "float16": _npy(GOOD_RATINGS.astype(np.float16)),
        "bool": _npy(GOOD_RATINGS.astype(bool)),
        "complex": _npy(GOOD_RATINGS.astype(np.complex64)),
        "unicode": _npy(GOOD_RATINGS.astype(str)),
        "bytes": _npy(GOOD_RATINGS.astype("S4")),
        "datetime": _npy(GOOD_RATINGS.astype("M8[s]")),
        "timedelta": _npy(GOOD_RATINGS.astype("m8[s]")),
        "structured": _npy(structured),
        "object-pickled": _npy(np.array([[0, 0, 1]], dtype=object), allow_pickle=True),
        "object-ints-pickled": _npy(GOOD_RATINGS.astype(object), allow_pickle=True),
        "one-dimensional": _npy(np.array([0, 0, 1])),
        "scalar": _npy(np.array(5)),
        "three-dimensional": _npy(np.zeros((2, 3, 3), np.int64)),
        "two-columns": _npy(GOOD_RATINGS[:, :2].copy()),
        "four-columns": _npy(np.concatenate([GOOD_RATINGS, GOOD_RATINGS[:, :1]], axis=1)),
        "zero-rows": _npy(np.zeros((0, 3), np.int64)),
        "zero-columns": _npy(np.zeros((3, 0), np.int64)),
        "label-2": _npy(np.array([[0, 0, 1], [0, 1, 2]], np.int64)),
        "label-minus-1": _npy(np.array([[0, 0, 1], [0, 1, -1]], np.int64)),
        "item-out-of-range": _npy(np.array([[0, 0, 1], [0, 7, 1]], np.int64)),
        "negative-user": _npy(np.array([[0, 0, 1], [-4, 1, 0]], np.int32)),
        "empty-file": b"",
        "magic-only": b"\x93NUMPY",
        "truncated-in-header": good[:12],
        "truncated-after-header": good[:header_length],
        "truncated-mid-data": good[: header_length + 20],
        "bad-version": b"\x93NUMPY\x09\x00" + good[8:],
        "version-3": _npy_header(good[10:header_length].decode("latin1"), (3, 0), good[header_length:]),
        "header-length-huge": b"\x93NUMPY\x01\x00\xff\xff{'descr': '<i8'",
        "header-not-a-dict": _npy_header("[1, 2, 3]" + " " * 54 + "\n"),
        "header-garbage": _npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 3), " + "\n"),
        "header-code": _npy_header("{'descr': __import__('os').getcwd(), 'fortran_order': False, 'shape': (1, 3), }\n"),
        "header-bad-descr": _npy_header("{'descr': 'not-a-dtype', 'fortran_order': False, 'shape': (1, 3), }\n"),
        "header-negative-shape": _npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (-1, 3), }\n"),
        "header-float-shape": _npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (1.5, 3), }\n"),
        "header-huge-shape": _npy_header(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000000, 3), }\n", body=good[header_length:]
        ),
        "header-overflow-shape": _npy_header(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387904, 3), }\n", body=b"\x00" * 48
        ),
        "header-too-many-rows": _npy_header(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1000000, 3), }\n", body=good[header_length:]
        ),
        "header-object-descr": _npy_header("{'descr': '|O', 'fortran_order': False, 'shape': (1, 3), }\n", body=b"\x80\x04N."),
        "pickle-file": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01K\x02\x86\x94.",
        "npz": b"PK\x03\x04" + random.Random(1).randbytes(60),
        "text-in-npy": b"0 0 1\n0 1 0\n",
        "random-bytes": random.Random(2).randbytes(512),
        "magic-random-bytes": b"\x93NUMPY" + random.Random(3).randbytes(512),
        **{special: special for special in SPECIALS},
    }


# --------------------------------------------------------------------------------------------
# Hand-written semantic corruptions
# --------------------------------------------------------------------------------------------


def _semantic_cases() -> list[tuple[str, str, dict]]:
    """(id, format, files overriding the base) for corruptions a generic mutation cannot express."""
    inter_header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    kg_header = "head_id:token\trelation_id:token\ttail_id:token\n"
    return [
        ("kgcn-label-2", "kgcn", {"ratings_final.txt": "0 0 1\n0 1 2\n"}),
        ("kgcn-label-255", "kgcn", {"ratings_final.txt": "0 0 255\n"}),
        ("kgcn-label-minus-1", "kgcn", {"ratings_final.txt": "0 0 -1\n"}),
        ("kgcn-all-negative-labels", "kgcn", {"ratings_final.txt": "0 0 0\n1 1 0\n"}),
        ("kgcn-item-out-of-range", "kgcn", {"ratings_final.txt": "0 0 1\n0 7 0\n"}),
        ("kgcn-item-huge", "kgcn", {"ratings_final.txt": f"0 {2**63 - 1} 1\n"}),
        ("kgcn-user-int64-max", "kgcn", {"ratings_final.txt": f"{2**63 - 1} 0 1\n"}),
        ("kgcn-entity-int64-max", "kgcn", {"kg_final.txt": f"0 0 {2**63 - 1}\n"}),
        ("kgcn-relation-int64-max", "kgcn", {"kg_final.txt": f"0 {2**63 - 1} 4\n"}),
        ("kgcn-entity-ten-pow-30", "kgcn", {"kg_final.txt": f"0 0 {10**30}\n"}),
        ("kgcn-kg-one-triple", "kgcn", {"kg_final.txt": "3 0 3\n"}),
        ("kgcn-npy-and-txt", "kgcn", {"ratings_final.npy": b"not numpy"}),
        ("kgcn-npy-directory-and-txt", "kgcn", {"ratings_final.npy": DIRECTORY}),
        ("kgcn-npy-fifo-and-txt", "kgcn", {"ratings_final.npy": FIFO}),
        ("kgcn-npy-dangling-and-txt", "kgcn", {"ratings_final.npy": DANGLING}),
        ("kgcn-no-ratings", "kgcn", {"ratings_final.txt": MISSING}),
        ("kgcn-both-ratings-missing-kg-dir", "kgcn", {"ratings_final.txt": MISSING, "kg_final.txt": DIRECTORY}),
        ("kgat-no-items-anywhere", "kgat", {"train.txt": "0\n1\n", "test.txt": "0\n1\n"}),
        ("kgat-no-train-items", "kgat", {"train.txt": "0\n1\n2\n"}),
        ("kgat-no-test-items", "kgat", {"test.txt": "0\n1\n"}),
        ("kgat-item-out-of-range", "kgat", {"test.txt": "0 2\n1 9\n"}),
        ("kgat-user-int64-max", "kgat", {"test.txt": f"{2**63 - 1} 1\n"}),
        ("kgat-item-int64-max", "kgat", {"train.txt": f"0 {2**63 - 1}\n"}),
        ("kgat-negative-item", "kgat", {"train.txt": "0 1 -2\n"}),
        ("kgat-tabs", "kgat", {"train.txt": "0\t0\t1\n1\t2\n"}),
        ("kgat-comma-lists", "kgat", {"train.txt": "0 0,1,2\n"}),
        ("kgat-kgcn-style-kg", "kgat", {"kg_final.txt": "0 0\n"}),
        ("lastfm-all-weights-negative", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\n7\t20\t-1\n5\t10\t-3\n"}),
        ("lastfm-no-artist-mapped", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\n7\t21\t1\n5\t11\t3\n"}),
        ("lastfm-header-only", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\n"}),
        ("lastfm-no-header", "lastfm-raw", {"user_artists.dat": "7\t20\t100\n5\t10\t3\n"}),
        ("lastfm-weight-inf", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\n7\t20\tinf\n"}),
        ("lastfm-weight-huge", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\n7\t20\t1e400\n"}),
        ("lastfm-user-huge", "lastfm-raw", {"user_artists.dat": f"userID\tartistID\tweight\n{10**30}\t20\t1\n"}),
        ("lastfm-user-word", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\nbob\t20\t1\n"}),
        ("lastfm-user-played-everything", "lastfm-raw", {"user_artists.dat": "userID\tartistID\tweight\n7\t10\t1\n7\t20\t1\n7\t30\t1\n7\t40\t1\n"}),
        ("lastfm-entity-mapped-twice", "lastfm-raw", {"item_index2entity_id.txt": "10\t0\n20\t0\n"}),
        ("lastfm-artist-mapped-twice", "lastfm-raw", {"item_index2entity_id.txt": "10\t0\n10\t1\n"}),
        ("lastfm-mapping-three-columns", "lastfm-raw", {"item_index2entity_id.txt": "10\t0\t5\n"}),
        ("lastfm-kg-self-loops", "lastfm-raw", {"kg.txt": "0\tr\t0\n"}),
        ("recbole-missing-user-column", "recbole", {"test.inter": "item_id:token\trating:float\ni1\t5\n"}),
        ("recbole-renamed-user-column", "recbole", {"test.inter": "user:token\titem_id:token\nuA\ti1\n"}),
        ("recbole-renamed-entity-column", "recbole", {"test.link": "item_id:token\tentity:token\ni1\te1\n"}),
        ("recbole-renamed-head-column", "recbole", {"test.kg": "head:token\trelation_id:token\ttail_id:token\ne1\tr1\tx\n"}),
        ("recbole-wrong-type-item", "recbole", {"test.inter": "user_id:token\titem_id:float\nuA\t1\n"}),
        ("recbole-token-seq-user", "recbole", {"test.inter": "user_id:token_seq\titem_id:token\nuA uB\ti1\n"}),
        ("recbole-rating-float-seq", "recbole", {"test.inter": "user_id:token\titem_id:token\trating:float_seq\nuA\ti1\t5 4\n"}),
        ("recbole-duplicate-column", "recbole", {"test.inter": "user_id:token\titem_id:token\tuser_id:token\nuA\ti1\tuB\n"}),
        ("recbole-untyped-header", "recbole", {"test.kg": "head_id\trelation_id\ttail_id\ne1\tr1\tx\n"}),
        ("recbole-empty-header-field", "recbole", {"test.kg": "head_id:token\t\ttail_id:token\ne1\tr1\tx\n"}),
        ("recbole-space-separated-header", "recbole", {"test.inter": "user_id:token item_id:token\nuA i1\n"}),
        ("recbole-data-as-header", "recbole", {"test.link": "i1\te1\ni3\te3\n"}),
        ("recbole-all-ratings-low", "recbole", {"test.inter": inter_header + "uA\ti1\t1\t1\nuB\ti2\t2\t2\n"}),
        ("recbole-rating-nan", "recbole", {"test.inter": inter_header + "uA\ti1\tnan\t1\n"}),
        ("recbole-rating-inf", "recbole", {"test.inter": inter_header + "uA\ti1\t-inf\t1\n"}),
        ("recbole-rating-hex", "recbole", {"test.inter": inter_header + "uA\ti1\t0x5\t1\n"}),
        ("recbole-rating-empty", "recbole", {"test.inter": inter_header + "uA\ti1\t\t1\n"}),
        ("recbole-user-empty", "recbole", {"test.inter": inter_header + "\ti1\t5\t1\n"}),
        ("recbole-link-to-unknown", "recbole", {"test.link": "item_id:token\tentity_id:token\nnowhere\tnothing\n"}),
        ("recbole-link-item-twice", "recbole", {"test.link": "item_id:token\tentity_id:token\ni1\te1\ni1\te3\n"}),
        ("recbole-link-entity-twice", "recbole", {"test.link": "item_id:token\tentity_id:token\ni1\te1\ni3\te1\n"}),
        ("recbole-link-dangling", "recbole", {"test.link": DANGLING}),
        ("recbole-link-directory", "recbole", {"test.link": DIRECTORY}),
        ("recbole-link-missing", "recbole", {"test.link": MISSING}),
        ("recbole-inter-directory", "recbole", {"test.inter": DIRECTORY}),
        ("recbole-inter-fifo", "recbole", {"test.inter": FIFO}),
        ("recbole-two-inter-files", "recbole", {"other.inter": RECBOLE["test.inter"]}),
        ("recbole-no-inter", "recbole", {"test.inter": MISSING}),
        ("recbole-mismatched-names", "recbole", {"test.kg": MISSING, "other.kg": RECBOLE["test.kg"]}),
        ("recbole-dotted-name", "recbole", {
            "test.inter": MISSING, "test.link": MISSING, "test.kg": MISSING,
            "my.data.inter": RECBOLE["test.inter"], "my.data.link": RECBOLE["test.link"], "my.data.kg": RECBOLE["test.kg"],
        }),
        ("recbole-kg-header-only", "recbole", {"test.kg": kg_header}),
        ("recbole-kg-bom-header", "recbole", {"test.kg": BOM + RECBOLE["test.kg"]}),
        ("recbole-kg-crlf-header-only", "recbole", {"test.kg": kg_header.replace("\n", "\r\n")}),
        ("recbole-short-row", "recbole", {"test.kg": kg_header + "e1\tr1\n"}),
        ("recbole-inter-nul", "recbole", {"test.inter": inter_header.encode() + b"uA\x00\ti1\t5\t1\n"}),
        ("no-files-at-all", "kgcn", {name: MISSING for name in KGCN}),
        ("only-notes", "kgcn", {"kg_final.txt": MISSING, "ratings_final.txt": MISSING, "README": "hello"}),
    ]


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------


def generate_cases(seed: int = SEED) -> list[Case]:
    """Every corrupted dataset, deterministically from ``seed``; about one in eight also goes to ``train``."""
    rng = random.Random(seed)
    cases: list[Case] = []

    def add(case_id: str, fmt: str, override: dict) -> None:
        files = {name: text.encode() if isinstance(text, str) and text not in SPECIALS else text
                 for name, text in {**BASES[fmt], **override}.items()}
        cases.append(Case(case_id, fmt, files))

    for fmt, base in BASES.items():
        for name, text in base.items():
            header = name in HEADER_FILES
            stem = f"{fmt}-{name}"
            for mutation, mutate in TEXT_MUTATIONS.items():
                add(f"{stem}-{mutation}", fmt, {name: mutate(text, header, rng)})
            # A random subset of bad tokens per file keeps the run short; the seed fixes which.
            for token_name in rng.sample(sorted(BAD_TOKENS), 8):
                add(f"{stem}-token-{token_name}", fmt, {name: _replace_token(text, header, rng, BAD_TOKENS[token_name])})
            for special in SPECIALS:
                add(f"{stem}-{special.strip('<>')}", fmt, {name: special})
    for npy_name, content in _npy_cases().items():
        add(f"kgcn-npy-{npy_name.strip('<>')}", "kgcn", {"ratings_final.txt": MISSING, "ratings_final.npy": content})
    for case_id, fmt, override in _semantic_cases():
        add(case_id, fmt, override)
    return [Case(case.id, case.format, case.files, train=rng.random() < 0.125) for case in cases]


CASES = generate_cases()


def write_case(root: Path, case: Case) -> Path:
    root.mkdir(parents=True)
    for name, content in case.files.items():
        path = root / name
        if content == MISSING:
            continue
        if content == DIRECTORY:
            path.mkdir()
            (path / "inside.txt").write_text("0 0 1\n")
        elif content == DANGLING:
            path.symlink_to(root / "nowhere" / name)
        elif content == LOOP:
            path.symlink_to(path)
        elif content == FIFO:
            os.mkfifo(path)
        elif content == DEVNULL:
            path.symlink_to(os.devnull)
        elif content == UNREADABLE:
            path.write_bytes(next(iter(BASES[case.format].values())).encode())
            path.chmod(0)
        else:
            path.write_bytes(content)
    return root


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the code swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float = CASE_SECONDS):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(argv: list[str], seconds: float = CASE_SECONDS) -> tuple[int, str, str]:
    """``main(argv)`` in-process under a time limit: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), time_limit(seconds):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, stdout.getvalue(), stderr.getvalue()


def assert_valid(dataset: Dataset) -> None:
    """The loaded dataset passes its own validation when rebuilt from its arrays."""
    kg = dataset.kg
    rebuilt_kg = KnowledgeGraph(kg.head_index, kg.rel_type, kg.tail_index, kg.num_entities, kg.num_relations)

    def rebuild(rows: Interactions) -> Interactions:
        return Interactions(rows.user_index, rows.item_index, rows.label, rows.num_users, rows.num_items)

    test = None if dataset.test_interactions is None else rebuild(dataset.test_interactions)
    rebuilt = Dataset(dataset.name, rebuild(dataset.interactions), rebuilt_kg, test)
    info = rebuilt.info()
    assert info == dataset.info()
    assert info["interactions"] >= 1 and info["positives"] >= 1 and info["triples"] >= 1
    assert all(isinstance(value, int) and value >= 0 for value in info.values())


def load_outcome(directory: Path, fmt: str | None) -> DataError | None:
    """None if the dataset loads (and is valid); else the DataError, checked to be one line naming a file."""
    try:
        with time_limit():
            dataset = load_dataset(directory, fmt)
    except DataError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, message
        assert error.path is not None, f"DataError names no file: {message}"
        assert message.startswith(f"{error.path}: ") or message.startswith(f"{error.path}:{error.line}: "), message
        named = Path(error.path)
        assert directory in (named, named.parent), f"names a path outside the dataset: {message}"
        assert error.reason, message
        return error
    assert_valid(dataset)
    return None


def test_fuzz_generator_is_large_seeded_and_covers_every_format():
    assert len(CASES) >= 250
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.format for case in CASES} == set(BASES)
    assert [case.files for case in generate_cases()] == [case.files for case in CASES]
    assert sum(case.train for case in CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_fuzz_corrupted_dataset_loads_or_fails_with_one_line(tmp_path, case):
    if UNREADABLE in case.files.values() and os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not stop reads")
    directory = write_case(tmp_path / "dataset", case)
    detected = load_outcome(directory, None)
    load_outcome(directory, case.format)

    code, stdout, stderr = run_cli(["data", "info", str(directory)])
    if detected is None:
        assert (code, stderr) == (0, ""), stderr
        assert "users" in stdout
    else:
        assert (code, stdout, stderr) == (2, "", f"tinykg: error: {detected}\n")

    if case.train and detected is not None:
        code, stdout, stderr = run_cli(["train", "--data", str(directory), "--epochs", "1", "--quiet"])
        assert (code, stdout, stderr) == (2, "", f"tinykg: error: {detected}\n")


# Cases that once ended in a traceback, a hang, a multi-line or misleading message: the exact file
# and words each must now give.
REGRESSIONS = [
    ("kgcn-kg_final.txt-bom-only", "kg_final.txt", "file is empty"),  # was IndexError
    ("kgat-train.txt-bom-newline", "train.txt", "file is empty"),  # was IndexError
    ("kgcn-npy-fifo", "ratings_final.npy", "not a regular file"),  # open() hung
    ("kgcn-npy-fifo-and-txt", "ratings_final.npy", "not a regular file"),  # open() hung
    ("kgcn-npy-header-code", "ratings_final.npy", "malformed header"),  # message held a memory address
    ("kgcn-npy-header-huge-shape", "ratings_final.npy", "truncated, shape (1000000000000, 3)"),
    ("kgcn-npy-header-object-descr", "ratings_final.npy", "pickled Python objects"),
    ("kgcn-all-negative-labels", "ratings_final.txt", "no positive rows"),  # loaded; AUC was nan
    ("kgat-no-train-items", "train.txt", "no user lists an item"),  # loaded; train raised RuntimeError
    ("kgat-no-test-items", "test.txt", "no user lists an item"),
    ("kgcn-relation-int64-max", "kg_final.txt", "relation 9223372036854775807 is too large"),  # loaded 2**63 relations
    ("kgcn-entity-int64-max", "kg_final.txt", "tail 9223372036854775807 is too large"),
    ("kgat-user-int64-max", "test.txt", "id 9223372036854775807 is too large"),
    ("kgcn-npy-int64-max-item", "ratings_final.npy", "row 0: item 9223372036854775807 is too large"),
    ("kgcn-kg_final.txt-cr-only", "kg_final.txt", "carriage return"),  # was "got 18 columns"
    ("recbole-test.inter-cr-only", "test.inter", "carriage return"),
    ("recbole-test.kg-double-bom", "test.kg", "found '\\ufeffhead_id'"),  # BOM was invisible
    ("recbole-test.link-leading-whitespace", "test.link", "found ' item_id'"),  # space was invisible
    ("recbole-inter-directory", "test.inter", "not a regular file"),  # said "file not found"
    ("recbole-link-dangling", "test.link", "broken symbolic link"),
    ("kgcn-kg_final.txt-directory", "kg_final.txt", "not a regular file"),  # said "cannot detect"
    ("lastfm-raw-kg.txt-fifo", "kg.txt", "not a regular file"),
    ("lastfm-all-weights-negative", "user_artists.dat", "a weight >= 0"),  # blamed the artist mapping
]


@pytest.mark.parametrize("case_id, file_name, words", REGRESSIONS, ids=[case[0] for case in REGRESSIONS])
def test_fuzz_regressions_name_the_file_and_the_cause(tmp_path, case_id, file_name, words):
    case = {case.id: case for case in CASES}[case_id]
    directory = write_case(tmp_path / "dataset", case)
    error = load_outcome(directory, None)
    assert error is not None and Path(error.path).name == file_name
    assert words in str(error)


@pytest.mark.parametrize(
    "name, shown",
    [("nul\x00byte", "nul\\x00byte"), ("x" * 5000, "x" * 5000), ("escape\x1b[31mred", "escape\\x1b[31mred"), ("new\nline", "new\\nline")],
    ids=["nul", "name-too-long", "escape-sequence", "newline"],
)
def test_fuzz_odd_directory_names_give_one_printable_line(tmp_path, name, shown):
    for fmt in (None, "kgcn", "recbole"):
        with pytest.raises(DataError) as excinfo, time_limit():
            load_dataset(tmp_path / name, fmt)
        message = str(excinfo.value)
        assert message.isprintable() and shown in message
    code, stdout, stderr = run_cli(["data", "info", str(tmp_path / name)])
    assert (code, stdout) == (2, "") and stderr.endswith("\n") and stderr[:-1].isprintable()
    assert stderr.startswith("tinykg: error: ") and shown in stderr


# --------------------------------------------------------------------------------------------
# Bad CLI options
# --------------------------------------------------------------------------------------------

TOY = ["--synthetic", "toy", "--epochs", "1", "--quiet"]
BAD_OPTIONS = [
    # argparse rejects these before main's own handling: usage line + "tinykg ...: error: ...".
    [],
    ["frobnicate"],
    ["data"],
    ["data", "info"],
    ["data", "info", "DIR", "--format", "csv"],
    ["train", "--model", "nosuch"],
    ["train", "--format", "csv"],
    ["train", "--bits", "3"],
    ["train", "--bits", "two"],
    ["train", "--epochs", "0"],
    ["train", "--epochs", "-1"],
    ["train", "--epochs", "1.5"],
    ["train", "--batch-size", "0"],
    ["train", "--lr", "0"],
    ["train", "--lr", "-0.1"],
    ["train", "--lr", "nan"],
    ["train", "--lr", "fast"],
    ["train", "--seed", "-1"],
    ["train", "--patience", "x"],
    ["train", "--hparams", "movies"],
    ["train", "--group-size", "big"],
    ["train", "--synthetic", "50"],
    ["train", "--synthetic", "huge"],
    ["train", "--synthetic", "nan"],
    ["train", "--synthetic", "1e400"],
    ["train", "--lr", "inf"],
    ["train", "--set", "no-equals-sign"],
    ["train", "--backend", "cuda"],
    ["train", "--data"],
    # Accepted by argparse, rejected by main: exactly one "tinykg: error:" line.
    ["data", "info", "MISSING"],
    ["data", "info", "FILE"],
    ["data", "info", "NUL"],
    ["data", "info", "LONG"],
    ["data", "info", "DIR", "--format", "recbole"],
    ["data", "info", "DIR", "--format", "kgat"],
    ["data", "info", "DIR", "--format", "lastfm-raw"],
    ["train", "--data", "MISSING", "--epochs", "1", "--quiet"],
    ["train", "--data", "FILE", "--epochs", "1", "--quiet"],
    ["train", "--data", "DIR", "--format", "recbole", "--epochs", "1", "--quiet"],
    ["train", "--group-size", "3", *TOY],
    ["train", "--group-size", "0", *TOY],
    ["train", "--group-size", "-8", *TOY],
    ["train", "--set", "embedding_dim=-1", *TOY],
    ["train", "--set", "embedding_dim=abc", *TOY],
    ["train", "--set", "embedding_dim=1e999", *TOY],
    ["train", "--set", "no_such_param=3", *TOY],
    ["train", "--set", "num_neighbors=0", *TOY],
    ["train", "--batch-size", "100000000", *TOY],
    ["train", "--device", "cuda:99", *TOY],
    ["train", "--device", "tpu", *TOY],
    ["train", "--device", "", *TOY],
    ["train", "--seed", "99999999999999999999999", *TOY],
]
ARGPARSE_ERROR = re.compile(r"^tinykg( [\w-]+)*: error: ")


def _substitute(argv: list[str], tmp_path: Path) -> list[str]:
    directory = write_case(tmp_path / "kgcn", Case("base", "kgcn", {k: v.encode() for k, v in KGCN.items()}))
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a directory\n")
    names = {
        "DIR": str(directory), "MISSING": str(tmp_path / "missing"), "FILE": str(a_file),
        "NUL": str(tmp_path / "nul\x00byte"), "LONG": str(tmp_path / ("x" * 5000)),
    }
    return [names.get(arg, arg) for arg in argv]


def _option_id(argv) -> str:
    return " ".join(argv) or "no-arguments"


@pytest.mark.parametrize("argv", BAD_OPTIONS, ids=[_option_id(argv) for argv in BAD_OPTIONS])
def test_fuzz_bad_cli_options_exit_2_with_one_error_line(tmp_path, argv):
    code, stdout, stderr = run_cli(_substitute(argv, tmp_path), OPTION_SECONDS)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if ARGPARSE_ERROR.match(line)]
    assert len(error_lines) == 1, stderr
    if stderr.startswith("tinykg: error: "):
        assert stderr.count("\n") == 1, stderr
    else:  # argparse: the usage lines, then one error line
        assert stderr.splitlines()[0].startswith("usage: tinykg"), stderr
        assert stderr.splitlines()[-1] == error_lines[0], stderr


# --------------------------------------------------------------------------------------------
# The same through a real process
# --------------------------------------------------------------------------------------------

SUBPROCESS_CASES = ("kgcn-kg_final.txt-random-bytes", "kgcn-npy-object-pickled", "recbole-test.inter-bom-only")


def test_fuzz_cli_subprocess_prints_no_traceback(tmp_path):
    by_id = {case.id: case for case in CASES}
    runs = []
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for index, case_id in enumerate(SUBPROCESS_CASES):
        directory = write_case(tmp_path / case_id, by_id[case_id])
        command = ["data", "info", str(directory)]
        if index == 0:
            command = ["train", "--data", str(directory), "--epochs", "1", "--quiet"]
        process = subprocess.Popen(
            [sys.executable, "-m", "tinykg", *command], cwd=REPO_ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        runs.append((directory, process))
    for directory, process in runs:
        try:
            stdout, stderr = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            for _, other in runs:
                other.kill()
            pytest.fail(f"`tinykg` on {directory} did not finish within 45 s")
        assert process.returncode == 2, stderr
        assert stdout == ""
        assert "Traceback" not in stderr
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tinykg: error: {directory}"), stderr
