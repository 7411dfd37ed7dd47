"""Shared test settings.

Most tests run many tiny tensor ops, where one intra-op thread is several times faster than two
on a small (and, in CI, busy) machine. Tests that need more threads set them themselves.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
