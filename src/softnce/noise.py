"""Noise distributions over classes for the ``- log q`` correction (torch only)."""

from __future__ import annotations

import torch

from softnce._validation import check_labels, check_tensor


def class_prior(
    labels: torch.Tensor, num_classes: int, pseudo_count: float = 1.0
) -> torch.Tensor:
    """Empirical class frequencies with a pseudo-count, so that no class has probability zero.

    ``q_c = (n_c + a) / (N + C a)`` with ``n_c`` the number of training labels of class ``c`` and
    ``a = pseudo_count``. ``labels`` may be integer labels (N,) or dense soft targets (N, C), whose
    column sums then play the role of ``n_c``.

    A class missing from the training labels would otherwise get ``q_c = 0`` and ``log q_c = -inf``
    (a NaN loss); with ``pseudo_count > 0`` it gets a small positive probability. With
    ``pseudo_count = 0`` a missing class raises ``ValueError``.

    Example::

        >>> class_prior(torch.tensor([0, 0, 1]), num_classes=3)
        tensor([0.5000, 0.3333, 0.1667])
    """
    labels = check_tensor("labels", labels)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; found {num_classes!r}")
    if isinstance(pseudo_count, bool) or not isinstance(pseudo_count, (int, float)):
        raise TypeError(f"pseudo_count must be a float >= 0; found {type(pseudo_count).__name__}")
    if not pseudo_count >= 0:
        raise ValueError(f"pseudo_count must be >= 0; found {pseudo_count}")
    if labels.is_floating_point():
        if labels.dim() != 2 or labels.shape[1] != num_classes:
            raise ValueError(
                f"labels as soft targets must have shape (N, {num_classes}); found shape "
                f"{tuple(labels.shape)}"
            )
        counts = labels.detach().double().sum(dim=0)
    else:
        labels = check_labels("labels", labels.long(), num_classes, None, True)
        counts = torch.bincount(labels.detach().cpu(), minlength=num_classes).double()
        counts = counts.to(labels.device)
    counts = counts + float(pseudo_count)
    if bool((counts <= 0).any()):
        missing = torch.nonzero(counts <= 0).flatten()[:10].tolist()
        raise ValueError(
            f"classes {missing} never occur in labels and pseudo_count=0: their noise probability "
            f"would be zero (log q = -inf); use pseudo_count > 0"
        )
    return (counts / counts.sum()).float()


def uniform_noise(num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``q_c = 1 / C``: equivalent to no correction (the term is constant over candidates)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int; found {num_classes!r}")
    return torch.full((num_classes,), 1.0 / num_classes, device=device)
