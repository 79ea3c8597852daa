"""Shared fixtures: every test starts from the same seed, and tiny shapes keep the suite fast on 2 CPU cores.

Without CUDA, Triton's interpreter is switched on here, before anything imports Triton (Lightning does): Triton
decides at import whether its kernels, its own library included, are interpreted, and tests/test_triton_scan.py runs
the Triton scan on CPU tensors.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory) -> str:
    """One prepared-data cache of tests.helpers.SMALL_DATA for every test that only reads it: each corpus is built
    once per session (tests that corrupt or rebuild a cache keep their own)."""
    return str(tmp_path_factory.mktemp("small-data-cache"))
