"""``softnce toy``: the paper's parameter-estimation experiment, see :mod:`softnce.toy`."""

from softnce.toy import COMMAND, HELP, add_arguments, run  # noqa: F401
