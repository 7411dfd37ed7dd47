"""SoftTargets: constructors against their formulas, products against dense algebra, utilities
and input validation."""

from __future__ import annotations

import pytest
import torch

from reference import ref_dense
from softnce import SoftTargets


def smoothed_one_hot(labels: torch.Tensor, c: int, eps: float) -> torch.Tensor:
    """timm's convention, written out: on value 1 - eps + eps / C, off value eps / C."""
    y = torch.full((labels.shape[0], c), eps / c, dtype=torch.float64)
    y[torch.arange(labels.shape[0]), labels] = 1.0 - eps + eps / c
    return y


def general(n: int, c: int, k: int, seed: int) -> SoftTargets:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(c, (n, k), generator=gen)
    w = torch.rand(n, k, generator=gen, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    total = w.sum(dim=1) + u
    return SoftTargets(idx, w / total[:, None], u / total, c)


# ----------------------------------------------------------------------------- constructors
def test_from_labels_is_one_hot():
    labels = torch.tensor([2, 0, 2, 1])
    st = SoftTargets.from_labels(labels, 3)
    assert st.k == 1 and len(st) == 4 and st.num_classes == 3
    torch.testing.assert_close(st.to_dense(), torch.nn.functional.one_hot(labels, 3).float())


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_label_smoothing_formula(eps):
    labels = torch.tensor([4, 0, 1])
    st = SoftTargets.label_smoothing(labels, 5, smoothing=eps)
    torch.testing.assert_close(st.to_dense(torch.float64), smoothed_one_hot(labels, 5, eps))
    torch.testing.assert_close(ref_dense(st, 5), smoothed_one_hot(labels, 5, eps))


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_mix_formula(eps):
    la = torch.tensor([0, 3, 2, 2])
    lb = torch.tensor([1, 3, 0, 4])  # row 1 mixes a class with itself
    ya, yb = smoothed_one_hot(la, 5, eps), smoothed_one_hot(lb, 5, eps)
    st = SoftTargets.mix(la, lb, 0.7, 5, smoothing=eps)
    assert st.k == 2
    torch.testing.assert_close(st.to_dense(torch.float64), 0.7 * ya + 0.3 * yb)
    lam = torch.tensor([0.0, 0.5, 0.25, 1.0])
    st = SoftTargets.mix(la, lb, lam, 5, smoothing=eps)
    expected = lam[:, None].double() * ya + (1 - lam[:, None].double()) * yb
    torch.testing.assert_close(st.to_dense(torch.float64), expected)
    torch.testing.assert_close(ref_dense(st, 5), expected)
    # a one-element tensor is broadcast to the batch
    torch.testing.assert_close(SoftTargets.mix(la, lb, torch.tensor(0.7), 5, eps).to_dense(),
                               SoftTargets.mix(la, lb, 0.7, 5, eps).to_dense())


def test_rows_sum_to_one():
    for st in (SoftTargets.mix(torch.tensor([1, 2]), torch.tensor([0, 0]), 0.3, 7, 0.1),
               general(5, 6, 3, 0)):
        torch.testing.assert_close(st.to_dense(torch.float64).sum(dim=1),
                                   torch.ones(len(st), dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_to_dense_matches_reference(k):
    st = general(6, 4, k, seed=k)
    torch.testing.assert_close(st.to_dense(), ref_dense(st, 4))
    assert st.to_dense(torch.float32).dtype == torch.float32


# ---------------------------------------------------------------------------------- products
@pytest.mark.parametrize("n,m,c,k", [(1, 1, 1, 1), (3, 5, 4, 2), (6, 2, 9, 3), (4, 4, 7, 1)])
def test_products_match_dense_algebra(n, m, c, k):
    st = general(m, c, k, seed=n * 100 + m)
    dense = ref_dense(st, c)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    torch.testing.assert_close(st.scores(a), b @ dense.T)
    w = torch.randn(n, m, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad((st.scores(a) * w).sum(), a)
    (g_ref,) = torch.autograd.grad(((b @ dense.T) * w).sum(), b)
    torch.testing.assert_close(g, g_ref)
    rows = torch.randn(m, c, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(st.dot_rows(rows), (rows * dense).sum(dim=1))
    v = torch.randn(c, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(st.dot_vector(v), dense @ v)
    assert torch.autograd.gradcheck(lambda x: st.scores(x), (a,))


# --------------------------------------------------------------------------------- utilities
def test_cat_pad_and_indexing():
    a = SoftTargets.label_smoothing(torch.tensor([0, 1]), 4, 0.1)
    b = general(3, 4, 3, seed=5)
    both = SoftTargets.cat([a, b])
    assert both.k == 3 and len(both) == 5
    torch.testing.assert_close(both.to_dense(), torch.cat([a.to_dense(torch.float64),
                                                          b.to_dense()]))
    padded = a.pad_to(4)
    assert padded.k == 4
    torch.testing.assert_close(padded.to_dense(), a.to_dense())
    assert a.pad_to(1) is a
    with pytest.raises(ValueError, match=r"pad_to: k=0 is smaller than the current k=1"):
        a.pad_to(0)
    dense = both.to_dense()
    torch.testing.assert_close(both[1].to_dense(), dense[1:2])
    torch.testing.assert_close(both[-1].to_dense(), dense[-1:])
    torch.testing.assert_close(both[-2].to_dense(), dense[-2:-1])
    torch.testing.assert_close(both[1:4].to_dense(), dense[1:4])
    idx = torch.tensor([4, 0, 0])
    torch.testing.assert_close(both[idx].to_dense(), dense[idx])
    mask = torch.tensor([True, False, True, False, True])
    torch.testing.assert_close(both[mask].to_dense(), dense[mask])
    assert both.shape == torch.Size((5, 4))
    assert both.device == torch.device("cpu")
    assert repr(both) == "SoftTargets(M=5, k=3, num_classes=4)"


def test_to_dtype_and_argmax():
    st = SoftTargets.mix(torch.tensor([0, 3]), torch.tensor([2, 1]), torch.tensor([0.8, 0.1]), 4)
    st64 = st.to(torch.float64)
    assert st64.dtype == torch.float64 and st64.uniform.dtype == torch.float64
    assert st64.indices.dtype == torch.long
    torch.testing.assert_close(st64.to_dense(), st.to_dense().double())
    assert st.argmax().tolist() == [0, 1]
    assert st.to("cpu").device.type == "cpu"


def test_int32_labels_accepted():
    st = SoftTargets.from_labels(torch.tensor([1, 0], dtype=torch.int32), 2)
    assert st.indices.dtype == torch.long
    torch.testing.assert_close(st.to_dense(), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


# -------------------------------------------------------------------------------- validation
I2 = torch.tensor([[0, 1]])
W2 = torch.tensor([[0.5, 0.5]])
U1 = torch.tensor([0.0])

BAD = [
    ("indices list", lambda: SoftTargets([[0]], W2[:, :1], U1, 3), TypeError,
     r"SoftTargets indices must be a torch.Tensor; found list"),
    ("classes", lambda: SoftTargets(I2, W2, U1, 0), ValueError,
     r"num_classes must be a positive int; found 0"),
    ("indices 1-D", lambda: SoftTargets(I2[0], W2, U1, 3), ValueError,
     r"indices must have shape \(M, k\); found shape \(2,\)"),
    ("indices float", lambda: SoftTargets(I2.float(), W2, U1, 3), TypeError,
     r"indices must be an integer tensor"),
    ("weights shape", lambda: SoftTargets(I2, W2[:, :1], U1, 3), ValueError,
     r"weights must have the shape of indices \(1, 2\); found \(1, 1\)"),
    ("weights int", lambda: SoftTargets(I2, torch.tensor([[1, 0]]), U1, 3), TypeError,
     r"weights must be floating point"),
    ("uniform shape", lambda: SoftTargets(I2, W2, torch.zeros(2), 3), ValueError,
     r"uniform must have shape \(1,\); found \(2,\)"),
    ("uniform int", lambda: SoftTargets(I2, W2, torch.zeros(1, dtype=torch.long), 3), TypeError,
     r"uniform must be floating point"),
    ("index range", lambda: SoftTargets(I2, W2, U1, 1), ValueError,
     r"indices must lie in \[0, 0\]; found values in \[0, 1\]"),
    ("negative index", lambda: SoftTargets(-I2, W2, U1, 3), ValueError,
     r"indices must lie in \[0, 2\]; found values in \[-1, 0\]"),
    ("weights nan", lambda: SoftTargets(I2, torch.tensor([[float("nan"), 1.0]]), U1, 3),
     ValueError, r"weights must be finite"),
    ("uniform negative", lambda: SoftTargets(I2, torch.tensor([[0.6, 0.6]]), -0.2 + U1, 3),
     ValueError, r"uniform must be non-negative"),
    ("sum", lambda: SoftTargets(I2, W2, U1 + 0.01, 3), ValueError,
     r"weights plus uniform mass must sum to 1 per row \(tolerance 0.001\); row 0 sums to 1.01"),
    ("cat empty", lambda: SoftTargets.cat([]), ValueError, r"at least one part"),
    ("cat classes", lambda: SoftTargets.cat([SoftTargets(I2, W2, U1, 3),
                                             SoftTargets(I2, W2, U1, 4)]), ValueError,
     r"same num_classes; found \[3, 4\]"),
    ("smoothing range", lambda: SoftTargets.label_smoothing(torch.tensor([0]), 3, 1.5),
     ValueError, r"smoothing must lie in \[0, 1\]; found 1.5"),
    ("smoothing type", lambda: SoftTargets.label_smoothing(torch.tensor([0]), 3, "0.1"),
     TypeError, r"smoothing must be a float"),
    ("labels float", lambda: SoftTargets.from_labels(torch.tensor([0.0]), 3), TypeError,
     r"labels must be an integer tensor of class indices"),
    ("labels list", lambda: SoftTargets.from_labels([0, 1], 3), TypeError,
     r"labels must be a torch.Tensor"),
    ("labels range", lambda: SoftTargets.from_labels(torch.tensor([0, 3]), 3), ValueError,
     r"labels must hold class indices in \[0, 2\]; found values in \[0, 3\]"),
    ("mix shapes", lambda: SoftTargets.mix(torch.tensor([0, 1]), torch.tensor([0]), 0.5, 3),
     ValueError, r"labels_a and labels_b must have the same shape"),
    ("mix labels_b range", lambda: SoftTargets.mix(torch.tensor([0]), torch.tensor([5]), 0.5, 3),
     ValueError, r"labels_b must hold class indices"),
    ("lam float", lambda: SoftTargets.mix(torch.tensor([0]), torch.tensor([1]), 1.2, 3),
     ValueError, r"lam must lie in \[0, 1\]"),
    ("lam tensor", lambda: SoftTargets.mix(torch.tensor([0, 1]), torch.tensor([1, 2]),
                                           torch.tensor([0.5, -0.1]), 3), ValueError,
     r"lam must lie in \[0, 1\]"),
    ("lam shape", lambda: SoftTargets.mix(torch.tensor([0, 1]), torch.tensor([1, 2]),
                                          torch.tensor([0.5, 0.1, 0.2]), 3), ValueError,
     r"lam must be a float or a tensor of shape \(2,\)"),
]


@pytest.mark.parametrize("call,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_validate_args_false_skips_value_checks():
    st = SoftTargets(I2, W2, U1 + 0.5, 3, validate_args=False)  # sums to 1.5: unchecked
    assert len(st) == 1
    with pytest.raises(ValueError, match=r"sums to 1.5"):
        st.validate()
    with pytest.raises(ValueError, match=r"indices must have shape"):  # shapes still checked
        SoftTargets(I2[0], W2, U1, 3, validate_args=False)


def test_integer_index_out_of_range_raises():
    t = SoftTargets.from_labels(torch.tensor([0, 1, 2]), 3)
    assert torch.equal(t[-1].indices, torch.tensor([[2]]))
    assert torch.equal(t[1].indices, torch.tensor([[1]]))
    with pytest.raises(IndexError, match="out of range"):
        t[3]
    with pytest.raises(IndexError, match="out of range"):
        t[-4]
