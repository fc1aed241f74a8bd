"""Dataset fixtures for the data-layer tests (``data_dir`` comes from tests/conftest.py: it skips
when the real data is missing, and fails under ``CI=true``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinykg.data import Dataset, load_dataset


@pytest.fixture(scope="session")
def lastfm_reference(data_dir: Path) -> Dataset:
    """KGCN's processed Last.FM files (the golden output of the original preprocessing)."""
    return load_dataset(data_dir / "lastfm-kgcn" / "processed_reference")


@pytest.fixture(scope="session")
def book_crossing(data_dir: Path) -> Dataset:
    return load_dataset(data_dir / "book-crossing-ripplenet")
