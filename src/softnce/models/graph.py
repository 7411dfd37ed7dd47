"""Graph node classifiers (PyTorch Geometric): ``gcn`` and ``deepergcn``.

Both map a ``torch_geometric`` ``Data``/``Batch`` (``x`` (N, F), ``edge_index`` (2, E), optional
``edge_attr`` (E, D)) to node logits (N, C), so node-level losses see the nodes of the batch as
the batch (the in-batch negatives of InfoNCE are the other nodes of the graphs in the batch).

* ``gcn``: Kipf & Welling GCN as in the CellTypeGraph baseline (``torch_geometric.nn.models.GCN``),
  2 layers, hidden 128, dropout 0.5; trained with Adam, lr 1e-2, weight decay 1e-5 (the configs).
  ``h^{l+1} = act(D^{-1/2} (A + I) D^{-1/2} h^l W^l)``.
* ``deepergcn``: DeeperGCN (Li et al., 2020) in the "res+" form used by the benchmark's best
  entry (EdgeDeeperGCN): node and edge encoders ``Linear(F, H)``, ``Linear(D, H)``; then 16
  ``DeepGCNLayer`` blocks ``h <- h + conv(dropout(act(norm(h))))`` whose ``conv`` is a ``GENConv``
  with learnable-temperature softmax aggregation
  ``m_v = sum_{u in N(v)} softmax_u(beta * m_vu) * m_vu``, ``m_vu = relu(h_u + e_vu) + eps``,
  followed by a 2-layer MLP with layer norm; the first block applies only its conv; the head is
  ``Linear(H, C)(dropout(act(norm(h))))``. Hidden 128, block dropout 0.1; Adam lr 1e-3, weight
  decay 1e-5 (the configs).

Sizes are set from ``cfg.model_options`` (``hidden``, ``num_layers``, ``dropout``, and for
``deepergcn`` also ``block_dropout``, ``use_edge_attr``), so tests can use small models.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softnce.models import MODELS


def _options(cfg: Any, allowed: set[str], model: str) -> dict[str, Any]:
    opts = getattr(cfg, "model_options", None) or {}
    if not isinstance(opts, dict):
        raise TypeError(f"model_options must be a mapping; found {type(opts).__name__}")
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"unknown {model} model_options {unknown}; valid: {sorted(allowed)}")
    return dict(opts)


def _pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; found {value!r}")
    return value


def _prob(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1); found {value!r}")
    return float(value)


def _graph_input(data: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    x = getattr(data, "x", None)
    ei = getattr(data, "edge_index", None)
    if not isinstance(x, torch.Tensor) or not isinstance(ei, torch.Tensor):
        raise TypeError(
            "graph models take a torch_geometric Data/Batch with tensors x and edge_index; found "
            f"{type(data).__name__}"
        )
    return x, ei, getattr(data, "edge_attr", None)


class GCNNodeClassifier(nn.Module):
    """``torch_geometric.nn.models.GCN`` on ``(data.x, data.edge_index)`` -> logits (N, C)."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128,
                 num_layers: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        from softnce._optional import require

        require("torch_geometric", "graph", "the gcn model")
        from torch_geometric.nn.models import GCN

        self.in_features = _pos_int("in_features", in_features)
        self.net = GCN(
            in_channels=in_features,
            hidden_channels=_pos_int("hidden", hidden),
            num_layers=_pos_int("num_layers", num_layers),
            out_channels=_pos_int("num_classes", num_classes),
            dropout=_prob("dropout", dropout),
        )

    def forward(self, data: Any) -> torch.Tensor:
        x, ei, _ = _graph_input(data)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"data.x must have shape (N, {self.in_features}); found "
                             f"{tuple(x.shape)}")
        return self.net(x, ei)


class DeeperGCN(nn.Module):
    """DeeperGCN (GENConv, softmax aggregation, ``DeepGCNLayer`` res+) -> logits (N, C)."""

    def __init__(self, in_features: int, num_classes: int, edge_features: int | None = None,
                 hidden: int = 128, num_layers: int = 16, dropout: float = 0.1,
                 block_dropout: float = 0.1) -> None:
        super().__init__()
        from torch_geometric.nn import DeepGCNLayer, GENConv

        self.in_features = _pos_int("in_features", in_features)
        hidden = _pos_int("hidden", hidden)
        num_layers = _pos_int("num_layers", num_layers)
        self.dropout = _prob("dropout", dropout)
        block_dropout = _prob("block_dropout", block_dropout)
        self.edge_features = None if edge_features is None else _pos_int("edge_features",
                                                                        edge_features)
        self.node_encoder = nn.Linear(in_features, hidden)
        self.edge_encoder = nn.Linear(edge_features, hidden) if edge_features else None
        self.layers = nn.ModuleList()
        for _ in range(num_layers):
            conv = GENConv(hidden, hidden, aggr="softmax", t=1.0, learn_t=True, num_layers=2,
                           norm="layer")
            self.layers.append(
                DeepGCNLayer(conv, nn.LayerNorm(hidden), nn.ReLU(), block="res+",
                             dropout=block_dropout)
            )
        self.head = nn.Linear(hidden, _pos_int("num_classes", num_classes))

    def forward(self, data: Any) -> torch.Tensor:
        x, ei, ea = _graph_input(data)
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"data.x must have shape (N, {self.in_features}); found "
                             f"{tuple(x.shape)}")
        h = self.node_encoder(x)
        e = None
        if self.edge_encoder is not None:
            if not isinstance(ea, torch.Tensor) or ea.shape != (ei.shape[1], self.edge_features):
                found = None if not isinstance(ea, torch.Tensor) else tuple(ea.shape)
                raise ValueError(
                    f"data.edge_attr must have shape ({ei.shape[1]}, {self.edge_features}) "
                    f"(use_edge_attr=True); found {found}"
                )
            e = self.edge_encoder(ea)
        first = self.layers[0]
        h = first.conv(h, ei, e)
        for layer in self.layers[1:]:
            h = layer(h, ei, e)
        h = first.act(first.norm(h))
        h = nn.functional.dropout(h, p=self.dropout, training=self.training)
        return self.head(h)


def _in_features(bundle: Any) -> int:
    shape = getattr(bundle, "input_shape", None)
    if getattr(bundle, "kind", None) != "graph" or not shape or len(shape) != 1:
        raise ValueError(
            "graph models need a graph data set (bundle.kind == 'graph', input_shape == (F,)); "
            f"found kind={getattr(bundle, 'kind', None)!r}, input_shape={shape!r}"
        )
    return int(shape[0])


@MODELS.register("gcn", help="2-layer GCN node classifier (CellTypeGraph baseline)")
def build_gcn(bundle: Any, cfg: Any) -> nn.Module:
    """GCN node classifier; ``model_options``: hidden (128), num_layers (2), dropout (0.5)."""
    o = _options(cfg, {"hidden", "num_layers", "dropout"}, "gcn")
    return GCNNodeClassifier(_in_features(bundle), int(bundle.num_classes),
                             hidden=o.get("hidden", 128), num_layers=o.get("num_layers", 2),
                             dropout=o.get("dropout", 0.5))


@MODELS.register("deepergcn", help="DeeperGCN (GENConv softmax, res+) node classifier")
def build_deepergcn(bundle: Any, cfg: Any) -> nn.Module:
    """DeeperGCN; ``model_options``: hidden (128), num_layers (16), dropout (0.1),
    block_dropout (0.1), use_edge_attr (True when the data set has edge features)."""
    o = _options(cfg, {"hidden", "num_layers", "dropout", "block_dropout", "use_edge_attr"},
                 "deepergcn")
    n_edge = (getattr(bundle, "extra", None) or {}).get("num_edge_features")
    use_edges = o.get("use_edge_attr", n_edge is not None)
    if use_edges and not n_edge:
        raise ValueError("model_options.use_edge_attr=True but the data set reports no "
                         "bundle.extra['num_edge_features']")
    return DeeperGCN(_in_features(bundle), int(bundle.num_classes),
                     edge_features=int(n_edge) if use_edges else None,
                     hidden=o.get("hidden", 128), num_layers=o.get("num_layers", 16),
                     dropout=o.get("dropout", 0.1), block_dropout=o.get("block_dropout", 0.1))


__all__ = ["DeeperGCN", "GCNNodeClassifier", "build_deepergcn", "build_gcn"]
