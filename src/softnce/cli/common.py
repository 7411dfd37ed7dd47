"""Flags shared by the commands that train (``train``, ``compare``, ``study``)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["TRAIN_FLAGS", "add_train_arguments", "config_from_args"]

# Flags that map 1:1 onto TrainConfig fields (dest -> field).
TRAIN_FLAGS = ("dataset", "data_path", "loss", "model", "finetune", "head", "input_size",
               "epochs", "max_steps", "num_classes", "batch_size", "lr", "seed", "device",
               "temperature", "negatives", "noise", "output_dir", "resume", "overwrite", "quiet",
               "teacher")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _registered(kind: str) -> list[str]:
    if kind == "dataset":
        from softnce.data import DATASETS

        return DATASETS.names()
    if kind == "loss":
        from softnce.harness.losses import LOSSES

        return LOSSES.names()
    from softnce.models import MODELS

    return MODELS.names()


def add_train_arguments(p: argparse.ArgumentParser, compare: bool = False) -> None:
    """The run flags shared by ``train`` (all) and ``compare`` (those that make sense there)."""
    from softnce.harness.config import HEAD_CHOICES, NEGATIVES_CHOICES, NOISE_CHOICES

    S = argparse.SUPPRESS
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="YAML config (or a preset name under configs/); flags override it")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key (VALUE parsed as YAML; dotted keys reach into "
                        "dataset_options / model_options / augment); repeatable")
    p.add_argument("--dataset", default=S,
                   help=f"data set: {', '.join(_registered('dataset'))}"
                   + (" (default digits)" if compare else ""))
    p.add_argument("--data-path", default=S, metavar="DIR", help="data directory or file")
    if not compare:
        p.add_argument("--loss", default=S, help=f"loss: {', '.join(_registered('loss'))} "
                                                 "(default soft-infonce)")
    p.add_argument("--model", default=S,
                   help=f"model: {', '.join(_registered('model'))} or a timm model name "
                        "(default: the data set's)")
    p.add_argument("--finetune", default=S, metavar="PATH", help="initial weights")
    if not compare:
        p.add_argument("--teacher", default=S, metavar="RUN_DIR",
                       help="distil from a finished run (its best.pt, weights-only); see the "
                            "kd_temperature, kd_alpha, kd_topk, kd_t2_scaling, kd_cache keys")
    p.add_argument("--head", default=S, choices=HEAD_CHOICES, help="classifier head")
    p.add_argument("--input-size", type=int, default=S, help="image side length")
    p.add_argument("--epochs", type=int, default=S, help="training epochs")
    p.add_argument("--max-steps", type=int, default=S, metavar="N",
                   help="stop after N optimiser steps (smoke tests)")
    p.add_argument("--num-classes", type=int, default=S, help="C for generated data sets")
    p.add_argument("--batch-size", type=int, default=S, help="batch size per process")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate")
    if not compare:
        p.add_argument("--seed", type=int, default=S, help="random seed")
        p.add_argument("--temperature", type=float, default=S, help="softmax temperature")
        p.add_argument("--negatives", default=S, choices=NEGATIVES_CHOICES,
                       help="InfoNCE candidate set")
        p.add_argument("--noise", default=S, choices=NOISE_CHOICES,
                       help="InfoNCE noise distribution")
    p.add_argument("--device", default=S, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--output-dir", default=S, metavar="DIR",
                   help="where the run writes" + (" (default softnce-compare/)" if compare
                                                  else " (default runs/<dataset>-<loss>-seed<k>)"))
    p.add_argument("--resume", action="store_true", default=S,
                   help="continue from the output directory's last checkpoint" if not compare
                   else "reuse finished runs and resume unfinished ones")
    if not compare:
        p.add_argument("--overwrite", action="store_true", default=S,
                       help="delete the run already in --output-dir and start over (without "
                            "it, or --resume, an output directory holding a run is refused)")
    p.add_argument("--quiet", action="store_true", default=S,
                   help="no progress bar: plain log lines (for log files)" if not compare
                   else "only the final table (no line per finished run)")


def config_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """``TrainConfig`` from ``--config``, ``--set`` and the flags that were given."""
    from softnce.harness.config import load_config

    fields = {k: getattr(args, k) for k in TRAIN_FLAGS if hasattr(args, k)}
    fields.update(extra)
    return load_config(args.config, args.set, **fields)


