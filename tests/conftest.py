"""Shared fixtures: every test starts from the same seed, and tiny shapes keep the suite fast on 2 CPU cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory) -> str:
    """One prepared-data cache of tests.helpers.SMALL_DATA for every test that only reads it: each corpus is built
    once per session (tests that corrupt or rebuild a cache keep their own)."""
    return str(tmp_path_factory.mktemp("small-data-cache"))
