"""Weights trained with the authors' public Translution code, in and out.

The reference modules store a relative table as ``to_<role>.unique_params``
(R, C_in, C_out) used as ``y = x @ P[r]``, which is our (R, C, D) layout, so
tables and Linear weights carry over unchanged; only the names differ.  The
reference ``to_q`` table is applied the spec's way (x_i with idx(j, i)).

Non-persistent reference buffers (the GPT ``causal`` mask, the RoPE
``cos_cached``/``sin_cached`` caches) are recomputed, not loaded; the exporters
write them so that the reference modules load the result with strict=True.
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ._checks import check_int_pair, check_positive_int
from .models import GPT, ViT
from .nn import ACmix, AlphaTranslution, Attention, Translution
from .nn.relative_block import VARIANTS, RelativeBlock

KINDS = ("vit", "gpt")
_BUFFERS = re.compile(r"(^|\.)(causal|rope\.cos_cached|rope\.sin_cached)$")


def _dtype_of(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The floating-point dtype of the weights (the loaded module takes it, so nothing is rounded)."""
    return next((v.dtype for v in state_dict.values() if v.is_floating_point()), torch.get_default_dtype())


def _parse_variant(variant: str) -> Tuple[bool, str]:
    """"QKV" -> (False, "qkv"); "alpha_KV" -> (True, "kv")."""
    name = variant.lower() if isinstance(variant, str) else ""
    alpha = name.startswith("alpha_")
    roles = name[len("alpha_"):] if alpha else name
    if roles not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(v.upper() for v in VARIANTS)}, optionally "
                         f"prefixed 'alpha_', got {variant!r}")
    return alpha, roles


def _official_names(block: nn.Module) -> Dict[str, str]:
    """Our parameter name -> the reference name, for one attention block."""
    names = {"norm.weight": "norm.weight", "norm.bias": "norm.bias"}
    if getattr(block, "project_out", True):
        names.update({"out_proj.weight": "to_out.0.weight", "out_proj.bias": "to_out.0.bias"})
    if isinstance(block, Translution):
        for role in block.relative:
            names[f"{role}_table"] = f"to_{role}.unique_params"
        if block.shared:
            names["shared_proj.weight"] = f"to_{''.join(block.shared)}.weight"
    elif isinstance(block, AlphaTranslution):
        names["qkv_proj.weight"] = "to_qkv.weight"
        for role in block.relative:
            names[f"{role}_table"] = f"to_{role}2.unique_params"
        if block.relative_scores:
            names.update({"q_relenc.weight": "to_q1.weight", "k_relenc.weight": "to_k1.weight"})
        if "v" in block.relative:
            names.update({"v_relenc.weight": "to_v1.weight", "v_relenc_out.weight": "to_v3.weight"})
    elif isinstance(block, Attention):
        names["qkv_proj.weight"] = "to_qkv.weight"
    else:
        raise TypeError(f"block must be Translution, AlphaTranslution or Attention, got {type(block).__name__}")
    return names


def _official_buffers(block: nn.Module) -> Dict[str, torch.Tensor]:
    """The persistent buffers a reference block has (recomputed from our configuration)."""
    if isinstance(block, RelativeBlock) and block.layout.causal:
        n = block.layout.max_len
        return {"causal": torch.tril(torch.ones(n, n)).view(1, 1, n, n)}
    if isinstance(block, Attention) and block.rope is not None:
        # The reference caches carry a leading broadcast dimension: (1, Hg, Wg, d).
        return {"rope.cos_cached": block.rope.cos[None].clone(), "rope.sin_cached": block.rope.sin[None].clone()}
    return {}


def _check_mapping(state_dict, where: str) -> None:
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise TypeError(f"{where}: state_dict must be a mapping of names to tensors (a module's state_dict()), "
                        f"got {type(state_dict).__name__}")


def _check_instance(name: str, value, cls: type) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")


def _check_keys(where: str, expected: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor],
                optional: Optional["re.Pattern[str]"] = _BUFFERS, compare_shapes: bool = True,
                header: str = "the state dict does not match this configuration") -> None:
    """One ValueError naming every missing and unexpected key and every shape mismatch.

    Keys matching ``optional`` (buffers the reference writes and we recompute) are neither
    required nor unexpected.
    """
    skip = (lambda k: bool(optional.search(k))) if optional is not None else (lambda k: False)
    missing = sorted(k for k in expected if k not in state_dict and not skip(k))
    unexpected = sorted(k for k in state_dict if k not in expected and not skip(k))
    problems = []
    if missing or unexpected:
        problems.append(f"{header}; missing keys: {missing or 'none'}; unexpected keys: {unexpected or 'none'}")
    if compare_shapes:
        problems += [f"{k} must have shape {tuple(shape)} for this configuration, got {tuple(state_dict[k].shape)}"
                     for k, shape in expected.items()
                     if k in state_dict and not skip(k) and tuple(state_dict[k].shape) != tuple(shape)]
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))


def _block_shapes(block: nn.Module, prefix: str = "") -> Dict[str, torch.Size]:
    """The reference names of one attention block with the shapes our configuration gives them."""
    ours = block.state_dict()
    return {prefix + theirs: ours[name].shape for name, theirs in _official_names(block).items()}


def _load_block(block: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Copies the (checked) reference entries under ``prefix`` into ``block``."""
    names = _official_names(block)
    block.load_state_dict({ours: state_dict[prefix + theirs] for ours, theirs in names.items()}, strict=True)


def _export_block(block: nn.Module, prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    if isinstance(block, AlphaTranslution) and block.alpha != 0.5:
        raise ValueError(f"only alpha=0.5 exists in the reference code, this block has alpha={block.alpha}")
    ours = block.state_dict()
    out = OrderedDict((prefix + theirs, ours[name].detach().clone()) for name, theirs in _official_names(block).items())
    out.update((prefix + k, v) for k, v in _official_buffers(block).items())
    return out


def load_official_attention(state_dict: Mapping[str, torch.Tensor], *, kind: str, variant: str, dim: int,
                            heads: int, dim_head: int, size: Union[int, Tuple[int, int]],
                            dim_relenc: int = 16) -> RelativeBlock:
    """Our block, in eval mode, computing exactly the reference attention module's forward.

    Args:
        state_dict: the reference module's ``state_dict()``.
        kind: "vit" (2D grid with a class token, ``size=(Hg, Wg)``) or "gpt"
            (causal, ``size=seq_len``).
        variant: "QKV", "QK", "KV", "QV", "Q", "K", "V" (Translution) or the same
            prefixed "alpha_" (α-Translution, the reference LoR_* classes).
        dim, heads, dim_head, dim_relenc: the reference module's sizes.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'vit' or 'gpt', got {kind!r}")
    _check_mapping(state_dict, "load_official_attention")
    alpha, roles = _parse_variant(variant)
    if kind == "vit":
        where = dict(layout="2d_cls", grid=check_int_pair("size", size, "(Hg, Wg) for kind='vit'"))
    else:
        where = dict(layout="causal", max_len=check_positive_int("size", size))
    if alpha:
        block: RelativeBlock = AlphaTranslution(dim, heads, dim_head, relative=roles, dim_relenc=dim_relenc, **where)
    else:
        block = Translution(dim, heads, dim_head, relative=roles, **where)
    block = block.to(_dtype_of(state_dict))
    _check_keys(f"load_official_attention(kind={kind!r}, variant={variant!r})", _block_shapes(block), state_dict)
    _load_block(block, state_dict, "")
    return block.eval()


def export_official_attention(block: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The reference module's state dict for one of our attention blocks (the reverse of loading)."""
    return _export_block(block)


def _infer_depth(state_dict: Mapping[str, torch.Tensor]) -> int:
    layers = {int(m.group(1)) for k in state_dict for m in [re.match(r"translution\.layers\.(\d+)\.", k)] if m}
    if not layers:
        raise ValueError("state_dict has no translution.layers.<i>.* entries; is it a reference ViT/GPT?")
    return max(layers) + 1


def _infer_tln_num(state_dict: Mapping[str, torch.Tensor], depth: int) -> Optional[int]:
    """Leading blocks with relative parameters; None when every block has them."""
    # Ordinary attention has only to_qkv and to_out; every relative block has other to_* entries.
    relative = [any(re.match(rf"translution\.layers\.{i}\.0\.to_(?!qkv\.|out\.)", k) for k in state_dict)
                for i in range(depth)]
    count = sum(relative)
    if relative != [True] * count + [False] * (depth - count):
        raise ValueError("the relative blocks of the state dict are not the leading blocks of the model")
    return None if count == depth else count


_FF = {"ff.net.0.weight": "1.net.0.weight", "ff.net.0.bias": "1.net.0.bias",
       "ff.net.1.weight": "1.net.1.weight", "ff.net.1.bias": "1.net.1.bias",
       "ff.net.4.weight": "1.net.4.weight", "ff.net.4.bias": "1.net.4.bias"}


def _infer_size(state_dict: Mapping[str, torch.Tensor], candidates) -> Optional[int]:
    """A model size read from the first present entry of ``candidates`` ((key, dim) pairs); None when none is."""
    return next((state_dict[k].shape[d] for k, d in candidates if k in state_dict and state_dict[k].dim() > d), None)


def _build_checked(build, export, state_dict: Mapping[str, torch.Tensor], sizes: Dict[str, Optional[int]],
                   where: str):
    """Checks the whole state dict against the model ``build(**sizes)`` would give, then builds it.

    The expected names and shapes come from exporting a meta-device copy (no memory); a size
    that no entry gives is a placeholder, and then only the keys are compared.
    """
    known = all(v is not None for v in sizes.values())
    filled = {k: 1 if v is None else v for k, v in sizes.items()}
    with torch.device("meta"):
        expected = {k: v.shape for k, v in export(build(**filled)).items()}
    _check_keys(where, expected, state_dict, compare_shapes=known)
    return build(**filled).to(_dtype_of(state_dict))


def _mlp_dim_candidates(depth: int):
    return [(f"translution.layers.{i}.1.net.1.{p}", 0) for i in range(depth) for p in ("weight", "bias")]


def _load_trunk(model: Union[ViT, GPT], state_dict: Mapping[str, torch.Tensor]) -> None:
    for i, block in enumerate(model.blocks):
        prefix = f"translution.layers.{i}."
        _load_block(block.mixer, state_dict, prefix + "0.")
        block.ff.load_state_dict({ours[len("ff."):]: state_dict[prefix + theirs] for ours, theirs in _FF.items()})
    model.norm.load_state_dict({"weight": state_dict["translution.norm.weight"],
                                "bias": state_dict["translution.norm.bias"]})


def _export_trunk(model: Union[ViT, GPT]) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict()
    for i, block in enumerate(model.blocks):
        out.update(_export_block(block.mixer, f"translution.layers.{i}.0."))
        ff = block.ff.state_dict()
        out.update((f"translution.layers.{i}.{theirs}", ff[ours[len("ff."):]].clone()) for ours, theirs in _FF.items())
    out["translution.norm.weight"] = model.norm.weight.detach().clone()
    out["translution.norm.bias"] = model.norm.bias.detach().clone()
    return out


def _mixer_args(variant: str) -> dict:
    alpha, roles = _parse_variant(variant)
    return dict(mixer="alpha" if alpha else "translution", relative=roles)


def load_official_vit(state_dict: Mapping[str, torch.Tensor], *, variant: str, image_size, patch_size,
                      heads: int, dim_head: int = 64, dim_relenc: int = 16, pool: str = "cls",
                      channels: int = 3) -> ViT:
    """Our :class:`ViT`, in eval mode, from a reference ViT state dict.

    dim, depth, mlp_dim, num_classes, the position embedding and the hybrid
    split (``tln_num``, RoPE or plain attention after it) are read from the
    state dict; the rest must be given as the reference model was built.
    """
    where = f"load_official_vit(variant={variant!r})"
    _check_mapping(state_dict, where)
    depth = _infer_depth(state_dict)
    tln_num = _infer_tln_num(state_dict, depth)
    hybrid_rope = any(k.endswith("rope.cos_cached") for k in state_dict)
    sizes = dict(num_classes=_infer_size(state_dict, [("mlp_head.weight", 0), ("mlp_head.bias", 0)]),
                 dim=_infer_size(state_dict, [("cls_token", 2), ("to_patch_embedding.2.weight", 0),
                                              ("translution.norm.weight", 0)]),
                 mlp_dim=_infer_size(state_dict, _mlp_dim_candidates(depth)))
    build = functools.partial(ViT, image_size=image_size, patch_size=patch_size, depth=depth, heads=heads,
                              dim_head=dim_head, channels=channels, pool=pool, dim_relenc=dim_relenc, tln_num=tln_num,
                              hybrid_attention="rope2d" if hybrid_rope else "plain",
                              pos_embedding="pos_embedding" in state_dict, **_mixer_args(variant))
    model = _build_checked(build, export_official_vit, state_dict, sizes, where)
    _load_trunk(model, state_dict)
    for i in (1, 2, 3):
        model.patch_embed[i - 1].load_state_dict({"weight": state_dict[f"to_patch_embedding.{i}.weight"],
                                                  "bias": state_dict[f"to_patch_embedding.{i}.bias"]})
    with torch.no_grad():
        model.cls_token.copy_(state_dict["cls_token"])
        if model.pos_embedding is not None:
            model.pos_embedding.copy_(state_dict["pos_embedding"])
    model.head.load_state_dict({"weight": state_dict["mlp_head.weight"], "bias": state_dict["mlp_head.bias"]})
    return model.eval()


def export_official_vit(model: ViT) -> "OrderedDict[str, torch.Tensor]":
    """The reference ViT state dict of our :class:`ViT` (the reverse of :func:`load_official_vit`)."""
    _check_instance("model", model, ViT)
    out = OrderedDict()
    for i in (1, 2, 3):
        out[f"to_patch_embedding.{i}.weight"] = model.patch_embed[i - 1].weight.detach().clone()
        out[f"to_patch_embedding.{i}.bias"] = model.patch_embed[i - 1].bias.detach().clone()
    if model.pos_embedding is not None:
        out["pos_embedding"] = model.pos_embedding.detach().clone()
    out["cls_token"] = model.cls_token.detach().clone()
    out.update(_export_trunk(model))
    out["mlp_head.weight"] = model.head.weight.detach().clone()
    out["mlp_head.bias"] = model.head.bias.detach().clone()
    return out


def load_official_gpt(state_dict: Mapping[str, torch.Tensor], *, variant: str, seq_len: int, heads: int,
                      dim_head: int = 64, dim_relenc: int = 16) -> GPT:
    """Our :class:`GPT`, in eval mode, from a reference GPT state dict.

    Hybrid reference GPTs (``tln_num``) load too; their ordinary-attention
    layers are unmasked in the reference code, ours stay causal, so only the
    non-hybrid models give identical logits.
    """
    where = f"load_official_gpt(variant={variant!r})"
    _check_mapping(state_dict, where)
    depth = _infer_depth(state_dict)
    sizes = dict(vocab_size=_infer_size(state_dict, [("wte.weight", 0), ("output_head.weight", 0)]),
                 dim=_infer_size(state_dict, [("wte.weight", 1), ("output_head.weight", 1), ("norm.weight", 0),
                                              ("translution.norm.weight", 0)]),
                 mlp_dim=_infer_size(state_dict, _mlp_dim_candidates(depth)))
    build = functools.partial(GPT, seq_len=seq_len, depth=depth, heads=heads, dim_head=dim_head, dim_relenc=dim_relenc,
                              tln_num=_infer_tln_num(state_dict, depth), pos_embedding="wpe.weight" in state_dict,
                              **_mixer_args(variant))
    model = _build_checked(build, export_official_gpt, state_dict, sizes, where)
    _load_trunk(model, state_dict)
    model.token_embed.load_state_dict({"weight": state_dict["wte.weight"]})
    if model.pos_embed is not None:
        model.pos_embed.load_state_dict({"weight": state_dict["wpe.weight"]})
    model.head_norm.load_state_dict({"weight": state_dict["norm.weight"], "bias": state_dict["norm.bias"]})
    model.head.load_state_dict({"weight": state_dict["output_head.weight"]})
    return model.eval()


def export_official_gpt(model: GPT) -> "OrderedDict[str, torch.Tensor]":
    """The reference GPT state dict of our :class:`GPT` (the reverse of :func:`load_official_gpt`)."""
    _check_instance("model", model, GPT)
    out = OrderedDict()
    if model.pos_embed is not None:
        out["wpe.weight"] = model.pos_embed.weight.detach().clone()
    out["wte.weight"] = model.token_embed.weight.detach().clone()
    out.update(_export_trunk(model))
    out["norm.weight"] = model.head_norm.weight.detach().clone()
    out["norm.bias"] = model.head_norm.bias.detach().clone()
    out["output_head.weight"] = model.head.weight.detach().clone()
    return out


_ACMIX_NAMES = {"q_proj.weight": "conv1.weight", "q_proj.bias": "conv1.bias", "k_proj.weight": "conv2.weight",
                "k_proj.bias": "conv2.bias", "v_proj.weight": "conv3.weight", "v_proj.bias": "conv3.bias",
                "pe_proj.weight": "conv_p.weight", "pe_proj.bias": "conv_p.bias", "fc.weight": "fc.weight",
                "dep_conv.weight": "dep_conv.weight", "rate1": "rate1", "rate2": "rate2"}


def load_official_acmix(state_dict: Mapping[str, torch.Tensor], in_planes: int, out_planes: int,
                        kernel_att: int = 7, head: int = 4, kernel_conv: int = 3, stride: int = 1) -> ACmix:
    """Our :class:`~translution_ext.nn.ACmix`, in eval mode, from the authors' ACmix module's state dict.

    Their keys: conv1/conv2/conv3 (q/k/v), conv_p, fc.weight, dep_conv.weight, rate1, rate2.
    """
    _check_mapping(state_dict, "load_official_acmix")
    block = ACmix(in_planes, out_planes, kernel_att, head, kernel_conv, stride).to(_dtype_of(state_dict))
    ours = block.state_dict()
    _check_keys("load_official_acmix", {t: ours[o].shape for o, t in _ACMIX_NAMES.items()}, state_dict,
                optional=None, header="the state dict does not match")
    block.load_state_dict({o: state_dict[t] for o, t in _ACMIX_NAMES.items()})
    return block.eval()


def export_official_acmix(block: ACmix) -> "OrderedDict[str, torch.Tensor]":
    """The authors' ACmix state dict of our block (the reverse of :func:`load_official_acmix`)."""
    _check_instance("block", block, ACmix)
    ours = block.state_dict()
    return OrderedDict((t, ours[o].detach().clone()) for o, t in _ACMIX_NAMES.items())
