"""``softnce toy``: samplers, metrics, estimators and the ``--quick`` command end to end."""

from __future__ import annotations

import argparse
import csv
import math

import pytest
import torch

from softnce import SoftTargetInfoNCE
from softnce.cli.toy import add_arguments, config_from_args, main
from softnce.experiments.toy import (
    APPLICABLE,
    DGPS,
    ESTIMATORS,
    FitSettings,
    _Queue,
    cc_log_normalizer,
    cc_mean,
    claim_verdicts,
    conditional_kl,
    contrastive_step_loss,
    fit_estimator,
    fit_many,
    generate,
    make_true_weights,
    relative_error,
    sample_categorical,
    sample_continuous_categorical,
    smooth_labels,
)


# ------------------------------------------------------------------------------ samplers
def test_true_weights_are_centred_unit_norm_and_seeded():
    w = make_true_weights(4, 3, seed=1)
    assert w.shape == (4, 3) and w.dtype == torch.float64
    torch.testing.assert_close(w.sum(0), torch.zeros(3, dtype=torch.float64))
    assert math.isclose(float(w.norm()), 1.0, rel_tol=1e-12)
    assert torch.equal(w, make_true_weights(4, 3, seed=1))
    assert not torch.equal(w, make_true_weights(4, 3, seed=2))
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 2; found 1"):
        make_true_weights(1, 3)


def test_categorical_sampler_matches_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[1.0, -0.5, 0.3]], dtype=torch.float64).expand(60_000, 3)
    y = sample_categorical(logits, g)
    freq = torch.bincount(y, minlength=3).double() / len(y)
    p = torch.softmax(logits[0], 0)
    se = (p * (1 - p) / len(y)).sqrt()
    assert bool(((freq - p).abs() < 5 * se).all()), (freq, p)


def test_cc_log_normalizer_closed_form_and_ties():
    eta = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    closed = sum(math.exp(eta[k]) / math.prod(float(eta[k] - eta[j]) for j in range(3) if j != k)
                 for k in range(3))
    assert math.isclose(float(cc_log_normalizer(eta).exp()), closed, rel_tol=1e-10)
    # ties: Z(c 1) = e^c / (K-1)! (the volume of the simplex); large spreads stay finite
    for k in (2, 3, 5):
        z = cc_log_normalizer(torch.full((k,), 0.7, dtype=torch.float64))
        assert math.isclose(float(z), 0.7 - math.log(math.factorial(k - 1)), abs_tol=1e-10)
    far = cc_log_normalizer(torch.tensor([40.0, -40.0, 0.0], dtype=torch.float64))
    assert math.isclose(float(far), 40.0 - math.log(40.0 * 80.0), rel_tol=1e-9)


def test_cc_sampler_k2_log_density_is_linear():
    """K = 2: alpha_1 has density exp(eta . alpha) / Z on [0, 1]; the histogram's log-frequencies
    must follow cc's log-density (slope eta_1 - eta_2 and the normaliser)."""
    g = torch.Generator().manual_seed(1)
    eta = torch.tensor([[1.5, -1.0]], dtype=torch.float64)
    a = sample_continuous_categorical(eta.expand(200_000, 2), g)
    torch.testing.assert_close(a.sum(1), torch.ones(len(a), dtype=torch.float64))
    bins = 20
    counts = torch.histc(a[:, 0], bins=bins, min=0.0, max=1.0).double()
    centres = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    alpha = torch.stack([centres, 1 - centres], 1)
    log_density = (alpha * eta).sum(1) - cc_log_normalizer(eta)
    expected = log_density.exp() / bins * len(a)  # bin probability ~ density * width
    # log-frequency against the exact log-density: within 5 standard errors in every bin
    se = 1 / counts.sqrt()
    assert bool(((counts.log() - expected.log()).abs() < 5 * se + 1e-3).all())
    slope = torch.linalg.lstsq(torch.stack([centres, torch.ones(bins, dtype=torch.float64)], 1),
                               counts.log().unsqueeze(1)).solution[0, 0]
    assert abs(float(slope) - 2.5) < 0.1


@pytest.mark.parametrize("eta", [[1.0, -0.5, 3.0], [12.0, -20.0, 3.0], [0.0, 0.0, 0.0]])
def test_cc_sampler_mean_and_covariance_k3(eta):
    """E[alpha] = grad log Z and Cov[alpha] = Hessian of log Z (exponential family)."""
    g = torch.Generator().manual_seed(2)
    e = torch.tensor([eta], dtype=torch.float64)
    a = sample_continuous_categorical(e.expand(100_000, 3), g)
    assert bool((a >= 0).all())
    mean = cc_mean(e)[0]
    cov = torch.autograd.functional.hessian(lambda t: cc_log_normalizer(t), e[0])
    se = (torch.diagonal(cov) / len(a)).sqrt()
    assert bool(((a.mean(0) - mean).abs() < 5 * se).all()), (a.mean(0), mean)
    torch.testing.assert_close(torch.cov(a.T), cov, atol=3e-3, rtol=0.05)


def test_samplers_reject_bad_input():
    with pytest.raises(ValueError, match=r"K >= 2"):
        sample_continuous_categorical(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"must be finite"):
        sample_continuous_categorical(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match=r"floating point; found dtype torch.int64"):
        sample_continuous_categorical(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        sample_categorical(torch.zeros(2, 3, 4))


def test_smooth_labels():
    t = smooth_labels(torch.tensor([2, 0]), 3, 0.3)
    torch.testing.assert_close(t, torch.tensor([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]],
                                               dtype=torch.float64))


def test_metrics():
    w = make_true_weights(3, 2)
    assert relative_error(2 * w, 2 * w) == 0.0
    assert math.isclose(relative_error(w + 5.0, w), 0.0, abs_tol=1e-12)  # common row: ignored
    assert math.isclose(relative_error(1.5 * w, w), 0.5, rel_tol=1e-12)
    eta = torch.randn(10, 3, dtype=torch.float64)
    for dgp in DGPS:
        assert conditional_kl(dgp, eta, eta + 3.0) < 1e-10
        assert conditional_kl(dgp, eta, 2 * eta) > 0


# ---------------------------------------------------------------------------- estimators
FAST = FitSettings(epochs=5, min_steps=300)


def _data(dgp: str, scale: float, n: int, eps: float = 0.0, seed: int = 0):
    w0 = make_true_weights(3, 2)
    return w0 * scale, generate(dgp, w0, scale, eps, n, seed)


@pytest.mark.parametrize("name", ["nll", "infonce-batch", "infonce-queue", "infonce-sampled"])
def test_hard_estimators_recover_w0_on_categorical(name):
    """NLL is the MLE; hard InfoNCE with the class-prior correction is ranking NCE (consistent)."""
    w, d = _data("categorical", 2.0, 10_000)
    v, steps = fit_estimator(name, d.x, d.hard, None, FAST, seed=3)
    assert steps >= 1
    assert relative_error(v, w) < 0.05  # measured 0.008 (nll) to 0.016 (sampled)


def test_simplex_negatives_recover_eta_on_cc_but_in_batch_and_soft_ce_do_not():
    """Theory: CC labels + simplex negatives -> f = eta. In-batch soft negatives are biased (the
    marginal of alpha is not log-linear); soft-target CE fits E[alpha | x] instead, which is why
    its prediction is calibrated for the mean while its W is not eta."""
    w, d = _data("continuous-categorical", 8.0, 5_000)
    v_simplex, _ = fit_estimator("soft-infonce-simplex", d.x, d.hard, d.soft, FAST, seed=4)
    v_batch, _ = fit_estimator("soft-infonce-batch", d.x, d.hard, d.soft, FAST, seed=4)
    v_ce, _ = fit_estimator("soft-ce", d.x, d.hard, d.soft, FAST)
    assert relative_error(v_simplex, w) < 0.05  # measured 0.014
    assert relative_error(v_batch, w) > 0.3  # measured 0.45
    assert relative_error(v_ce, w) > 0.6  # measured 0.80
    x = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eta = x @ w.T
    assert conditional_kl("continuous-categorical", eta, x @ v_simplex.T) < 0.01
    mean = cc_mean(eta)

    def pred_kl(v):
        lq = torch.log_softmax(x @ v.T, 1)
        return float((mean * (mean.log() - lq)).sum(1).mean())

    assert pred_kl(v_ce) < 0.2 * pred_kl(v_simplex)


def test_simplex_negatives_with_a_non_uniform_dirichlet():
    """Any known density works: Dirichlet(0.5) negatives with their -log r correction."""
    w, d = _data("continuous-categorical", 4.0, 5_000)
    v, _ = fit_estimator("soft-infonce-simplex", d.x, d.hard, d.soft,
                         FitSettings(epochs=5, min_steps=300, simplex_concentration=0.5), seed=6)
    assert relative_error(v, w) < 0.06  # measured 0.015


def test_fit_many_checks_shapes_and_names():
    with pytest.raises(ValueError, match=r"estimator must be one of .*; found 'nce'"):
        fit_estimator("nce", torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), None)
    with pytest.raises(ValueError, match=r"expected x \(P, n, d\)"):
        fit_many("nll", torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3))


def test_soft_infonce_on_smoothed_labels_is_sharpened_by_one_over_one_minus_eps():
    """losses.py docs: with smoothed targets in-batch InfoNCE converges to
    (log p - log q) / (1 - eps) + log q, i.e. about W / (1 - eps) for a near-uniform prior."""
    eps = 0.3
    w, d = _data("smoothed", 2.0, 10_000, eps=eps)
    v, _ = fit_estimator("soft-infonce-batch", d.x, d.hard, d.soft, FAST, seed=5)
    vc, wc = v - v.mean(0), w - w.mean(0)
    scale = float((vc * wc).sum() / (wc * wc).sum())
    assert abs(scale - 1 / (1 - eps)) < 0.1, scale  # measured 1.423 vs 1 / 0.7 = 1.429
    v_nll, _ = fit_estimator("nll", d.x, d.hard, None, FAST)
    v_ce, _ = fit_estimator("soft-ce", d.x, d.hard, d.soft, FAST)
    assert relative_error(v_nll, w) < 0.06
    assert relative_error(v_ce, w) > 0.2  # flattened towards uniform


def test_soft_ce_on_one_hot_is_nll():
    _, d = _data("categorical", 1.0, 2000)
    v1, _ = fit_estimator("nll", d.x, d.hard, None, FAST)
    v2, _ = fit_estimator("soft-ce", d.x, d.hard, None, FAST)
    torch.testing.assert_close(v1, v2, atol=1e-5, rtol=0)


# ------------------------------------------- vmapped step losses == the library modules
def _problems(p, b, k, soft, gen):
    z = torch.randn(p, b, k, generator=gen)
    if soft:
        t = torch.distributions.Dirichlet(torch.ones(k)).sample((p, b))
    else:
        t = torch.randint(k, (p, b), generator=gen)
    q = torch.rand(p, k, generator=gen) + 0.2
    return z, t, q / q.sum(1, keepdim=True)


@pytest.mark.parametrize("mode, soft", [("batch", True), ("batch", False), ("queue", True),
                                        ("queue", False), ("sampled", True), ("sampled", False),
                                        ("simplex", True)])
def test_step_losses_equal_the_modules(mode, soft):
    """The vmapped per-problem losses are the library modules' losses for the same candidates
    (simplex with a non-uniform concentration, so the -log r biases matter)."""
    gen = torch.Generator().manual_seed(7)
    p, b, k, m = 2, 6, 4, 5
    est = ESTIMATORS[("soft-infonce-" if soft else "infonce-") + mode]
    conc = 0.5
    modules = [SoftTargetInfoNCE(negatives=mode,
                                 queue_size=8, num_negatives=m, simplex_concentration=conc)
               for _ in range(p)]
    queue = None
    for _ in range(4):  # the queue fills, wraps around and is read before each push
        z, t, q = _problems(p, b, k, soft, gen)
        if mode == "queue" and queue is None:
            queue = _Queue(p, 8, t)
        neg = None
        if mode == "sampled":
            neg = torch.randint(k, (p, m), generator=gen)
        elif mode == "simplex":
            neg = torch.distributions.Dirichlet(torch.ones(k)).sample((p, m))
        elif mode == "queue":
            neg = queue.candidates()
        ours = contrastive_step_loss(est, z, t, q, neg, conc)
        for i, mod in enumerate(modules):
            if mode != "simplex":
                mod.noise_probs = q[i]
            if mode == "sampled":
                mod.sample_negatives = lambda c, dev, i=i, neg=neg: neg[i]
            if mode == "simplex":
                mod.sample_simplex_negatives = lambda c, dev, dt, i=i, neg=neg: neg[i].to(dt)
            torch.testing.assert_close(ours[i], mod(z[i], t[i]))
        if queue is not None:
            queue.push(t)


# ------------------------------------------------------------------------ verdict logic
def _rows(errs):
    """errs: {estimator: (err at low u, err at high u)} over 3 seeds with tiny noise."""
    rows = []
    for est, (lo, hi) in errs.items():
        for seed in range(3):
            for u, e in ((0.1, lo), (1.0, hi)):
                rows.append({"phase": "grid", "dgp": "categorical", "estimator": est,
                             "uncertainty": u, "seed": seed, "rel_err": e + 0.001 * seed})
    return rows


@pytest.mark.parametrize("errs, verdict", [
    ({"nll": (0.1, 0.5), "infonce-batch": (0.1, 0.2)}, "holds"),
    ({"nll": (0.1, 0.2), "infonce-batch": (0.1, 0.5)}, "reversed"),
    ({"nll": (0.5, 0.4), "infonce-batch": (0.5, 0.1)}, "no growth"),
])
def test_claim_verdicts(errs, verdict):
    (v,) = claim_verdicts(_rows(errs))
    assert v["verdict"] == verdict and v["reference"] == "nll"


# ------------------------------------------------------------------------------- command
def test_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["--quick", "--output-dir", str(out)]) == 0
    with open(out / "toy_runs.csv") as f:
        rows = list(csv.DictReader(f))
    per_dgp = {d: len(APPLICABLE[d]) for d in DGPS}
    # quick: 2 seeds, 2 levels per DGP; sweep 2 sizes (one of them is the grid's n)
    assert len(rows) == sum(2 * 2 * k + 2 * 2 * k for k in per_dgp.values())
    for r in rows:
        assert r["estimator"] in APPLICABLE[r["dgp"]]
        for key in ("rel_err", "kl", "pred_kl"):
            assert math.isfinite(float(r[key])) and float(r[key]) >= 0
    for name in ("toy_uncertainty.png", "toy_sample_size.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    summary = (out / "toy_summary.md").read_text()
    assert "## continuous categorical (soft labels)" in summary
    assert "Claim" in summary and "verdict" in summary
    assert "wrote" in capsys.readouterr().out


def test_cli_arguments_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="softnce")
    sub = parser.add_subparsers(dest="command")
    add_arguments(sub.add_parser("toy"))
    args = parser.parse_args(["toy", "--quick", "--scales", "1,2", "--dgp", "categorical",
                              "--epochs", "2", "--estimators", "nll"])
    cfg = config_from_args(args)
    assert cfg.scales == (1.0, 2.0) and cfg.dgps == ("categorical",) and cfg.fit.epochs == 2
    assert cfg.estimators_for("categorical") == ("nll",) and cfg.seeds == 2
    assert main(["--quick", "--seeds", "1", "--output-dir", str(tmp_path)]) == 2
    assert "seeds must be an int >= 2; found 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--scales", "a,b"])


def test_output_dir_is_the_documented_name_and_out_a_hidden_alias(tmp_path):
    parser = argparse.ArgumentParser(prog="softnce toy")
    add_arguments(parser)
    help_text = parser.format_help()
    assert "--output-dir" in help_text and "--out " not in help_text
    assert "--out\n" not in help_text and "--out," not in help_text
    assert parser.parse_args([]).output_dir.as_posix() == "outputs/toy"
    assert parser.parse_args(["--output-dir", str(tmp_path / "a")]).output_dir == tmp_path / "a"
    assert parser.parse_args(["--out", str(tmp_path / "b")]).output_dir == tmp_path / "b"
    assert not hasattr(parser.parse_args(["--out", str(tmp_path / "b")]), "out")
    # the alias reaches the run: --replot of a small CSV writes into the folder either flag names
    from softnce.experiments.toy import FIELDS

    csv_path = tmp_path / "runs.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in _rows({"nll": (0.1, 0.5), "infonce-batch": (0.1, 0.2)}):
            w.writerow({**r, "scale": 1 / r["uncertainty"], "epsilon": 0.0, "n": 100,
                        "kl": 0.01, "pred_kl": 0.02, "steps": 1, "fit_seconds": 0.0})
    for flag in ("--out", "--output-dir"):
        folder = tmp_path / flag.strip("-")
        assert main(["--quick", "--dgp", "categorical", flag, str(folder),
                     "--replot", str(csv_path)]) == 0
        assert "| nll |" in (folder / "toy_summary.md").read_text()
        assert (folder / "toy_uncertainty.png").is_file()

def test_the_softnce_command_parses_the_alias(tmp_path):
    from softnce.cli import build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["toy", "--quick", "--out", str(tmp_path)])
    assert args.output_dir == tmp_path
