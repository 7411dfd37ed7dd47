"""The plain torch.optim path gives the same parameter groups and the same numbers as timm's
``create_optimizer_v2`` (which it replaces when no layer decay is asked for)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from softnce.harness.optim import build_optimizer, weight_decay_groups

timm_optim = pytest.importorskip("timm.optim")  # timm is an optional dependency (images extra)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.b = nn.Linear(8, 3)
        self.token = nn.Parameter(torch.randn(1, 8))

    def no_weight_decay(self) -> set[str]:
        return {"token"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.norm(self.a(x)) + self.token))


@pytest.mark.parametrize("name", ["adamw", "adam"])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_plain_optimizer_equals_timm(name, wd):
    torch.manual_seed(0)
    m1 = _Net()
    m2 = _Net()
    m2.load_state_dict(m1.state_dict())
    o1 = build_optimizer(m1, name, 1e-2, wd, None)
    o2 = timm_optim.create_optimizer_v2(m2, opt=name, lr=1e-2, weight_decay=wd)
    assert type(o1) is type(o2)
    g1 = [(g["weight_decay"], [p.shape for p in g["params"]]) for g in o1.param_groups]
    g2 = [(g["weight_decay"], [p.shape for p in g["params"]]) for g in o2.param_groups]
    assert g1 == g2
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(5):
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_groups_skip_biases_norms_and_no_weight_decay_names():
    m = _Net()
    groups = weight_decay_groups(m, 0.1)
    no_decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.1
    assert id(m.token) in no_decay and id(m.a.bias) in no_decay and id(m.norm.weight) in no_decay
    assert id(m.a.weight) not in no_decay


def test_layer_decay_goes_through_timm():
    o = build_optimizer(_Net(), "adamw", 1e-3, 0.05, 0.65)
    assert any("lr_scale" in g for g in o.param_groups)
