"""timm ViT factory, MLP head and MAE / timm / safetensors checkpoint loading (miniature ViTs)."""

from __future__ import annotations

import argparse
import pathlib
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from softnce.models import MODELS, build_model
from softnce.models.checkpoints import load_state_dict_file
from softnce.models.vit import MLPHead, build_timm_classifier, load_finetune_checkpoint

TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
NAME = "vit_tiny_patch16_224"
D = TINY["embed_dim"]


def _finetune_model(input_size=32, num_classes=5, head="linear", **kw):
    return build_timm_classifier(
        NAME, num_classes, input_size=input_size, head=head, head_hidden_dim=16,
        drop_path_rate=0.1, timm_kwargs=TINY, **kw,
    )


def _mae_state_dict(img_size=32, seed=0) -> dict[str, torch.Tensor]:
    """Encoder keys exactly as MAE pre-training names them, plus mask token and decoder."""
    torch.manual_seed(seed)
    enc = timm.create_model(NAME, pretrained=False, img_size=img_size, num_classes=0,
                            global_pool="token", **TINY)
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    n = (img_size // TINY["patch_size"]) ** 2
    dd = 16  # decoder width
    sd["mask_token"] = torch.randn(1, 1, dd)
    sd["decoder_embed.weight"] = torch.randn(dd, D)
    sd["decoder_embed.bias"] = torch.randn(dd)
    sd["decoder_pos_embed"] = torch.randn(1, n + 1, dd)
    for name, shape in (("norm1.weight", (dd,)), ("attn.qkv.weight", (3 * dd, dd)),
                        ("mlp.fc1.weight", (4 * dd, dd))):
        sd[f"decoder_blocks.0.{name}"] = torch.randn(shape)
    sd["decoder_norm.weight"] = torch.ones(dd)
    sd["decoder_norm.bias"] = torch.zeros(dd)
    sd["decoder_pred.weight"] = torch.randn(TINY["patch_size"] ** 2 * 3, dd)
    sd["decoder_pred.bias"] = torch.zeros(TINY["patch_size"] ** 2 * 3)
    return sd


def _decoder_keys(sd):
    return {k for k in sd if k == "mask_token" or k.startswith("decoder_")}


# -- building --------------------------------------------------------------------------------------


def test_vit_is_the_mae_finetuning_variant():
    m = _finetune_model()
    assert m.global_pool == "avg"
    assert isinstance(m.fc_norm, nn.LayerNorm) and isinstance(m.norm, nn.Identity)
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # linear rule, last block
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 5
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_mlp_head_structure():
    h = MLPHead(8, 3, hidden_dim=6)
    kinds = [type(m).__name__ for m in h.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert all(m.bias is None for m in h.layers if isinstance(m, nn.Linear))
    assert h.layers[1].affine and not h.layers[7].affine
    assert [m.out_features for m in h.layers if isinstance(m, nn.Linear)] == [6, 6, 3]
    h.train()
    z = h(torch.randn(10, 8))
    assert z.shape == (10, 3)
    # final BatchNorm without affine parameters: each logit column is standardised in training
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    m = _finetune_model(head="mlp")
    assert isinstance(m.head, MLPHead) and m.head.hidden_dim == 16
    with pytest.raises(ValueError, match="hidden_dim"):
        MLPHead(8, 3, hidden_dim=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="timm model name"):
        build_timm_classifier("no_such_model_xyz", 3)
    with pytest.raises(ValueError, match="head"):
        build_timm_classifier(NAME, 3, head="conv", timm_kwargs=TINY, input_size=32)
    with pytest.raises(ValueError, match="num_classes"):
        build_timm_classifier(NAME, 1, timm_kwargs=TINY, input_size=32)


def test_registry_factories_read_the_harness_config():
    assert {"timm", "vit_base_patch16_224"} <= set(MODELS.names())
    bundle = SimpleNamespace(num_classes=4, input_shape=(3, 32, 32))
    cfg = SimpleNamespace(model=NAME, head="mlp", drop_path=0.1, input_size=None, finetune=None,
                          model_options={"head_hidden_dim": 8, "timm_kwargs": TINY})
    m = build_model(NAME, bundle, cfg)  # not registered by name: routed to "timm"
    assert isinstance(m.head, MLPHead) and m.head.hidden_dim == 8
    assert m.patch_embed.img_size == (32, 32)  # from the bundle's input shape
    cfg.model_options = {"head_hidden": 8}
    with pytest.raises(ValueError, match="head_hidden"):
        build_model(NAME, bundle, cfg)


def test_timm_factory_refuses_non_image_input():
    from softnce.models import MODELS

    bundle = SimpleNamespace(name="digits", num_classes=10, input_shape=(64,))
    cfg = SimpleNamespace(model="resnet18", head="linear", drop_path=0.0, input_size=None,
                          finetune=None, model_options={})
    with pytest.raises(ValueError, match=r"needs image input \(C, H, W\).*\(64,\)"):
        MODELS.get("timm")(bundle, cfg)


def test_layer_decay_groups_with_mlp_head():
    from timm.optim import param_groups_layer_decay

    m = _finetune_model(head="mlp")
    groups = param_groups_layer_decay(m, weight_decay=0.05, layer_decay=0.65,
                                      no_weight_decay_list=m.no_weight_decay())
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    n_layers = TINY["depth"] + 2  # embeddings, blocks, head
    assert scale_of[id(m.head.layers[0].weight)] == pytest.approx(1.0)
    assert scale_of[id(m.fc_norm.weight)] == pytest.approx(1.0)
    assert scale_of[id(m.blocks[0].attn.qkv.weight)] == pytest.approx(0.65 ** (n_layers - 2))
    assert scale_of[id(m.patch_embed.proj.weight)] == pytest.approx(0.65 ** (n_layers - 1))
    assert wd_of[id(m.head.layers[0].weight)] == 0.05
    assert wd_of[id(m.head.layers[1].weight)] == 0.0  # BatchNorm: 1-d, no weight decay
    assert wd_of[id(m.pos_embed)] == 0.0


# -- MAE checkpoints -------------------------------------------------------------------------------


def test_mae_checkpoint_keys_and_pos_embed_interpolation(tmp_path):
    sd = _mae_state_dict(img_size=32)
    path = tmp_path / "mae_pretrain_tiny.pth"
    torch.save({"model": sd}, path)
    model = _finetune_model(input_size=48)  # 6x6 patch grid vs the checkpoint's 4x4
    rep = load_finetune_checkpoint(model, path)
    assert set(rep.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert set(rep.unexpected_keys) == {"norm.weight", "norm.bias"}
    assert set(rep.dropped_keys) == _decoder_keys(sd)
    assert rep.pos_embed_resized == ((4, 4), (6, 6))
    expected_pos = resample_abs_pos_embed(sd["pos_embed"], new_size=[6, 6], old_size=[4, 4],
                                          num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 37, D)
    assert torch.allclose(model.pos_embed, expected_pos)
    assert torch.equal(model.pos_embed[:, 0], sd["pos_embed"][:, 0])  # class token untouched
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.cls_token, sd["cls_token"])
    assert rep.head_reinitialized
    assert model.head.bias.abs().max() == 0
    # MAE: trunc_normal_(head.weight, std=2e-5) (bounds +-2 absolute, so effectively normal)
    assert 1e-5 < model.head.weight.std() < 3e-5
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 5)


def test_pos_embed_unchanged_at_the_same_size(tmp_path):
    sd = _mae_state_dict(img_size=32)
    torch.save({"model": sd}, tmp_path / "ckpt.pth")
    model = _finetune_model(input_size=32, head="mlp")
    rep = load_finetune_checkpoint(model, tmp_path / "ckpt.pth")
    assert rep.pos_embed_resized is None
    assert torch.equal(model.pos_embed, sd["pos_embed"])
    assert {"fc_norm.weight", "fc_norm.bias"} <= set(rep.missing_keys)
    assert {k for k in rep.missing_keys if k.startswith("head.")} == {
        k for k in model.state_dict()
        if k.startswith("head.") and not k.endswith("num_batches_tracked")}
    assert rep.head_reinitialized and model.head.last_linear.weight.std() < 5e-5


def test_head_of_wrong_shape_is_dropped_matching_head_is_kept(tmp_path):
    src = _finetune_model(num_classes=7)
    torch.save({"model": src.state_dict(), "epoch": 3,
                "args": argparse.Namespace(lr=1e-3)}, tmp_path / "ft7.pth")
    m5 = _finetune_model(num_classes=5)
    rep = load_finetune_checkpoint(m5, tmp_path / "ft7.pth")
    assert set(rep.dropped_keys) == {"head.weight", "head.bias"}
    assert set(rep.missing_keys) == {"head.weight", "head.bias"} and not rep.unexpected_keys
    assert torch.equal(m5.fc_norm.weight, src.fc_norm.weight)
    m7 = _finetune_model(num_classes=7)
    rep = load_finetune_checkpoint(m7, tmp_path / "ft7.pth")
    assert not rep.missing_keys and not rep.dropped_keys and not rep.head_reinitialized
    assert torch.equal(m7.head.weight, src.head.weight)


def test_safetensors_and_timm_state_dict(tmp_path):
    src = _finetune_model(num_classes=5)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "timm_ckpt.pth.tar")
    for f in ("model.safetensors", "timm_ckpt.pth.tar"):
        m = _finetune_model(num_classes=5)
        rep = load_finetune_checkpoint(m, tmp_path / f)
        assert not rep.missing_keys and not rep.unexpected_keys
        x = torch.randn(2, 3, 32, 32)
        src.eval(), m.eval()
        assert torch.allclose(m(x), src(x))


class _RunsCode:
    """Unpickling this would create a directory."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.mkdir, (pathlib.Path(self.target),))


def test_checkpoint_with_pickled_callable_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    sd = _mae_state_dict()
    torch.save({"model": sd, "hook": _RunsCode(str(marker))}, tmp_path / "evil.pth")
    m = _finetune_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match=r"refusing to load checkpoint .*evil\.pth.*execute code"):
        load_finetune_checkpoint(m, tmp_path / "evil.pth")
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict_file(tmp_path / "nope.pth")
    torch.save({"model": {"x": 1}}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="no tensors"):
        load_state_dict_file(tmp_path / "empty.pth")
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match="none of its tensors"):
        load_finetune_checkpoint(_finetune_model(), tmp_path / "foreign.pth")
    sd = _mae_state_dict()
    sd["patch_embed.proj.weight"] = torch.zeros(D, 3, 4, 4)
    torch.save(sd, tmp_path / "patch4.pth")
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        load_finetune_checkpoint(_finetune_model(), tmp_path / "patch4.pth")


def test_factory_loads_finetune_and_flags_it(tmp_path):
    torch.save({"model": _mae_state_dict()}, tmp_path / "mae.pth")
    bundle = SimpleNamespace(num_classes=3, input_shape=(3, 32, 32))
    cfg = SimpleNamespace(model=NAME, head="linear", drop_path=0.1, input_size=32,
                          finetune=str(tmp_path / "mae.pth"),
                          model_options={"timm_kwargs": TINY})
    m = MODELS.get("timm")(bundle, cfg)
    assert m.finetune_loaded is True
    assert set(m.load_report.unexpected_keys) == {"norm.weight", "norm.bias"}


def test_registered_embedding_head_wraps_the_backbone(tmp_path):
    from timm.optim import param_groups_layer_decay

    torch.save({"model": _mae_state_dict()}, tmp_path / "mae.pth")
    bundle = SimpleNamespace(num_classes=6, input_shape=(3, 32, 32))
    cfg = SimpleNamespace(model=NAME, head="embedding", drop_path=0.0, input_size=32,
                          finetune=str(tmp_path / "mae.pth"), model_options={"timm_kwargs": TINY})
    m = MODELS.get("timm")(bundle, cfg)
    assert m.finetune_loaded and isinstance(m.backbone.head, nn.Identity)
    assert set(m.load_report.dropped_keys) >= {"mask_token"}
    assert hasattr(m, "compute_loss") and hasattr(m, "eval_stats")  # the head's engine hooks
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 6)
    groups = param_groups_layer_decay(m, weight_decay=0.05, layer_decay=0.5,
                                      no_weight_decay_list=m.no_weight_decay())
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert scale_of[id(m.backbone.patch_embed.proj.weight)] == pytest.approx(0.5 ** 3)
    assert scale_of[id(m.backbone.blocks[1].mlp.fc1.weight)] == pytest.approx(0.5)
    assert scale_of[id(m.head.weight)] == pytest.approx(1.0)
    assert wd_of[id(m.backbone.pos_embed)] == 0.0
