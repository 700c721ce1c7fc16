"""Fixtures of the data source tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipelines.data.imagetree import tree_files, write_local


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A local class-folder tree (3 classes, PNG + JPEG, mixed sizes and modes)."""
    return write_local(tmp_path_factory.mktemp("tree"), tree_files())
