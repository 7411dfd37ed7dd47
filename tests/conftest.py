"""Shared test settings.

Most tests run many tiny tensor ops, where one intra-op thread is several times faster than two
on a small (and, in CI, busy) machine. Tests that need more threads set them themselves.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


import pytest  # noqa: E402

import softnce._validation  # noqa: E402


@pytest.fixture(params=["each", "batched"])
def read_mode(request, monkeypatch):
    """Both ways the value checks read their results: each value as it comes (the CPU's way,
    the default here) and stacked for one read (an accelerator's way, forced on the CPU), so
    the bad-input tests cover the code path a GPU takes too."""
    monkeypatch.setattr(softnce._validation, "BATCH_READS_ON_CPU", request.param == "batched")
    return request.param
