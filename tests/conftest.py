"""Shared fixtures: every test starts from the same seed, and tiny shapes keep the suite fast on 2 CPU cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
