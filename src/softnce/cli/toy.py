"""``softnce toy``: the paper's parameter-estimation experiment, see :mod:`softnce.experiments.toy`."""

from softnce.experiments.toy import COMMAND, HELP, add_arguments, run  # noqa: F401
