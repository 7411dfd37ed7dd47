"""Calibration metrics (kept name): everything lives in :mod:`softnce.metrics`."""

from softnce.metrics import *  # noqa: F403
from softnce.metrics import __all__  # noqa: F401
from softnce.metrics._inputs import SUM_TOLERANCE  # noqa: F401
