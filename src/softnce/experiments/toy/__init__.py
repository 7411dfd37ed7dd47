r"""``softnce toy``: parameter estimation with known ground truth under label uncertainty.

The paper (Hugger & Uhlmann, arXiv 2404.14076, Figure 1) motivates soft-target InfoNCE with a toy
example in which more label uncertainty makes NLL's parameter estimates worse than InfoNCE's. Its
data-generating process is not published; this module rebuilds the experiment from first
principles with every choice explicit.

Data-generating processes (all with known, seeded parameters)::

    x ~ N(0, I_d),   eta(x) = s W0 x,   W0 (K, d) row-centred with ||W0||_F = 1

* ``categorical``: ``y ~ Categorical(softmax(eta(x)))``, hard labels; label uncertainty ``1 / s``.
* ``continuous-categorical``: soft labels ``alpha ~ CC(eta(x))`` (Gordon-Rodriguez et al. 2020),
  the density on the simplex (Lebesgue measure on K - 1 coordinates)::

      p(alpha | x) = exp(eta . alpha) / Z(eta),   Z(eta) = sum_k e^{eta_k} / prod_{j != k}(eta_k - eta_j)

  ``Z`` is the divided difference of ``exp`` at ``eta_1..eta_K`` (Hermite-Genocchi), computed
  stably as the top-right entry of ``expm(diag(eta) + superdiagonal ones)``. Sampling is exact:
  the *ordered rejection sampler* of Gordon-Rodriguez et al. 2020 (drop the coordinate with the
  largest ``eta``; the others are independent truncated exponentials on [0, 1] with rates
  ``eta_j - max eta <= 0``, accepted when they sum to at most 1). Acceptance is at least 1/2 for
  K = 3 and grows with ``s``; it falls like ``1/(K-1)!`` for many nearly equal ``eta`` (large K).
  Hard labels for the hard estimators are one annotator vote ``y ~ Categorical(alpha)``.
  Label uncertainty ``1 / s``.
* ``smoothed``: hard labels of ``categorical`` at a fixed ``s`` turned into label-smoothed targets
  ``(1 - eps) onehot(y) + eps / K``; label uncertainty ``eps``.

Estimators (linear model ``f(x) = V x``, no bias, temperature 1):

* ``nll``: hard cross-entropy on hard labels; full-batch L-BFGS in float64 (the exact MLE).
* ``soft-ce``: soft-target cross-entropy on the soft targets (the paper's NLL baseline trained
  on soft labels); full-batch L-BFGS in float64. On ``categorical`` it *is* ``nll``.
* ``infonce-{batch,queue,sampled}``: InfoNCE on hard labels with
  ``noise_probs = class_prior(labels)``, the candidate sets of ``InfoNCE(negatives=...)``.
* ``soft-infonce-{batch,queue,sampled}``: soft-target InfoNCE on the soft targets with
  ``noise_probs = class_prior(targets)`` (the published ``- alpha . log(prior)`` correction), the
  candidate sets of ``SoftTargetInfoNCE(negatives=...)``. On ``categorical`` they *are* the hard
  ones. ``sampled`` pairs soft positives with one-hot negatives drawn from ``q``; for many
  negatives its loss tends to soft-target CE (``sum_k q_k e^{f_k - log q_k} = sum_k e^{f_k}``).
* ``soft-infonce-simplex``: soft-target InfoNCE whose negatives are drawn from a known density
  ``r`` on the simplex (Dirichlet, uniform by default) with its exact correction: every candidate
  ``alpha_j`` is scored ``f(x) . alpha_j - log r(alpha_j)`` (``SoftTargetInfoNCE(negatives=
  "simplex")``, i.e. :func:`softnce.separated_infonce` with ``positive_bias``/``negative_bias``).
  For CC labels its optimum is ``f = eta`` up to a constant per row. Only for
  ``continuous-categorical`` (the positives need a density).

The InfoNCE estimators are fitted with Adam on minibatches (see :func:`fit_contrastive`). All
(level, seed) problems of a panel run in one Python loop: each problem's loss is the library's
functional (:func:`softnce.soft_target_infonce` / :func:`softnce.separated_infonce`) mapped over
problems with :func:`torch.func.vmap`, with exactly the candidate sets of the modules
(``tests/test_toy.py`` checks the losses against the modules step by step). The problems stay
independent (Adam is elementwise; every problem has its own permutation and negatives).

Metrics (held-out ``x``; ``C`` centres over classes, since ``W`` is identifiable only up to a
common row)::

    rel_err = ||C V - C s W0||_F / ||C s W0||_F
    kl      = mean_x KL( p(label | x; s W0) || p(label | x; V) )   (the DGP's own label model:
              Categorical for categorical and smoothed, CC for continuous-categorical)
    pred_kl = mean_x KL( E[target | x] || softmax(V x) )            (the library's prediction)

``pred_kl`` matters because soft-target CE is consistent for ``E[target | x]`` (for CC labels the
mean of the CC, not ``softmax(eta)``), while InfoNCE recovers ``eta``: which one is "right"
depends on what the soft labels are supposed to mean.

Outputs (``softnce toy --output-dir DIR``): ``toy_runs.csv`` (every fit), ``toy_uncertainty.png`` (error against label
uncertainty, one line per estimator, 95% interval bands over seeds), ``toy_sample_size.png``
(error against n at a fixed uncertainty: bias stays flat, variance falls like ``n^-1/2``) and
``toy_summary.md``.

Modules: :mod:`~softnce.experiments.toy.generators` (DGPs, samplers, metrics),
:mod:`~softnce.experiments.toy.estimators` (fits), :mod:`~softnce.experiments.toy.run` (the grid
and its run), :mod:`~softnce.experiments.toy.report` (aggregation, verdicts, plots, summary); the
command line is :mod:`softnce.cli.toy`.
"""

from __future__ import annotations

from softnce.experiments.toy.estimators import (
    APPLICABLE,
    ESTIMATORS,
    NLL_REFERENCES,
    Estimator,
    FitSettings,
    _Queue,  # noqa: F401  (private; tests check it against the queue of the module)
    contrastive_step_loss,
    fit_contrastive,
    fit_estimator,
    fit_many,
)
from softnce.experiments.toy.generators import (
    DGP_TITLES,
    DGPS,
    cc_log_normalizer,
    cc_mean,
    conditional_kl,
    expected_target,
    generate,
    make_true_weights,
    prediction_kl,
    relative_error,
    sample_categorical,
    sample_continuous_categorical,
    smooth_labels,
    uncertainty,
)
from softnce.experiments.toy.report import (
    aggregate,
    claim_verdicts,
    mean_interval,
    plot_sample_size,
    plot_uncertainty,
    read_runs,
    summary_markdown,
    sweep_slopes,
)
from softnce.experiments.toy.run import FIELDS, ToyConfig, quick_config, run_experiment

__all__ = [
    "APPLICABLE", "DGPS", "DGP_TITLES", "ESTIMATORS", "FIELDS", "NLL_REFERENCES", "Estimator",
    "FitSettings", "ToyConfig", "aggregate", "cc_log_normalizer", "cc_mean", "claim_verdicts",
    "conditional_kl", "contrastive_step_loss", "expected_target", "fit_contrastive",
    "fit_estimator", "fit_many", "generate", "make_true_weights", "mean_interval",
    "plot_sample_size", "plot_uncertainty", "prediction_kl", "quick_config", "read_runs",
    "relative_error", "run_experiment", "sample_categorical", "sample_continuous_categorical",
    "smooth_labels", "summary_markdown", "sweep_slopes", "uncertainty",
]
