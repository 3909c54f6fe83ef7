"""Translution and α-Translution written literally from the spec, on reference-code state dicts.

Independent of the package: index maps from the spec formulas with Python
loops, gathered (N, N, C, D) weights, every pair projected explicitly.  Small
shapes only.  Parameters use the names of the authors' modules (to_q.unique_params,
to_qk.weight, to_q1.weight, ...), so the same functions check both our modules
and the weight loaders.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

ROLES = ("q", "k", "v")


def spec_rows(layout: str, size, actual=None) -> Tuple[int, torch.Tensor, torch.Tensor]:
    """(R, K, Q): K[i, j] = idx(i, j) for k/v, Q[i, j] = idx_q(j, i) for q (spec §3)."""
    if layout in ("1d", "causal"):
        L = size
        n = actual or L
        pos = list(range(n))
        if layout == "1d":
            R = 2 * L - 1
            idx = idx_q = lambda a, m: pos[a] - pos[m] + L - 1  # noqa: E731
        else:
            R = L
            idx = lambda a, m: max(0, pos[a] - pos[m])  # noqa: E731
            idx_q = lambda a, m: min(0, pos[a] - pos[m]) + L - 1  # noqa: E731
    else:
        hg, wg = size
        h, w = actual or size
        cls = layout == "2d_cls"
        R = (2 * hg - 1) * (2 * wg - 1) + (3 if cls else 0)
        n = h * w + int(cls)

        def grid_idx(a, m):
            (ra, ca), (rm, cm) = divmod(a, w), divmod(m, w)
            return (ra - rm + hg - 1) * (2 * wg - 1) + (ca - cm + wg - 1)

        def idx(a, m):
            if not cls:
                return grid_idx(a, m)
            if a == 0 and m == 0:
                return R - 3
            if a == 0:
                return R - 2
            if m == 0:
                return R - 1
            return grid_idx(a - 1, m - 1)

        idx_q = idx
    K = torch.tensor([[idx(i, j) for j in range(n)] for i in range(n)])
    Q = torch.tensor([[idx_q(j, i) for j in range(n)] for i in range(n)])
    return R, K, Q


def _pairs(x, role, P, K, Q):
    """(B, N, N, D) per-pair vectors of a relative role from its table P (R, C, D)."""
    if role == "q":
        return torch.einsum("bic,ijcd->bijd", x, P[Q])  # q_ij = x_i W[idx(j, i)]
    return torch.einsum("bjc,ijcd->bijd", x, P[K])  # k_ij, v_ij = x_j W[idx(i, j)]


def _broadcast(t, role, n):
    """Shared (B, N, D) -> (B, N, N, D): q depends on i, k and v on j."""
    return t[:, :, None].expand(-1, -1, n, -1) if role == "q" else t[:, None, :].expand(-1, n, -1, -1)


def _softmax_scores(dots, causal):
    if causal:
        n = dots.shape[-1]
        dots = dots.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return dots.softmax(-1)


def _heads(t, heads):  # (B, N, N, H·d) -> (B, N, N, H, d)
    return t.unflatten(-1, (heads, t.shape[-1] // heads))


def _out(sd, o):
    return F.linear(o, sd["to_out.0.weight"], sd["to_out.0.bias"]) if "to_out.0.weight" in sd else o


def translution(sd: Dict[str, torch.Tensor], x, *, layout, size, heads, dim_head, relative, actual=None):
    """Spec §3 on a reference Translution state dict.  x: (B, N, C) -> (B, N, C)."""
    R, K, Q = spec_rows(layout, size, actual)
    n = x.shape[1]
    h = F.layer_norm(x, x.shape[-1:], sd["norm.weight"], sd["norm.bias"])
    shared = [r for r in ROLES if r not in relative]
    roles = {}
    if shared:
        chunks = F.linear(h, sd[f"to_{''.join(shared)}.weight"]).chunk(len(shared), -1)
        roles.update({r: _broadcast(c, r, n) for r, c in zip(shared, chunks)})
    for r in relative:
        assert sd[f"to_{r}.unique_params"].shape[0] == R
        roles[r] = _pairs(h, r, sd[f"to_{r}.unique_params"], K, Q)
    q, k, v = (_heads(roles[r], heads) for r in ROLES)
    dots = (q * k).sum(-1).permute(0, 3, 1, 2) * dim_head ** -0.5  # (B, H, N, N)
    attn = _softmax_scores(dots, layout == "causal")
    o = (attn.permute(0, 2, 3, 1)[..., None] * v).sum(2).flatten(-2)  # sum over j
    return _out(sd, o)


def alpha_translution(sd, x, *, layout, size, heads, dim_head, relative, actual=None, weight=0.5):
    """Spec §4 on a reference LoR-Translution state dict.  ``weight`` is the α of the relative branch:
    the reference's fixed 1/2 factors at 0.5, (1 − α, α) otherwise (the spec's "exposing α")."""
    R, K, Q = spec_rows(layout, size, actual)
    n = x.shape[1]
    h = F.layer_norm(x, x.shape[-1:], sd["norm.weight"], sd["norm.bias"])
    q1, k1, v1 = (_broadcast(t, r, n) for t, r in zip(F.linear(h, sd["to_qkv.weight"]).chunk(3, -1), ROLES))
    dots = (_heads(q1, heads) * _heads(k1, heads)).sum(-1)
    if "q" in relative or "k" in relative:
        q2, k2 = (F.linear(h, sd[f"to_{r}1.weight"]) for r in ("q", "k"))
        q2 = _pairs(q2, "q", sd["to_q2.unique_params"], K, Q) if "q" in relative else _broadcast(q2, "q", n)
        k2 = _pairs(k2, "k", sd["to_k2.unique_params"], K, Q) if "k" in relative else _broadcast(k2, "k", n)
        dots = (1 - weight) * dots + weight * (_heads(q2, heads) * _heads(k2, heads)).sum(-1)
    attn = _softmax_scores(dots.permute(0, 3, 1, 2) * dim_head ** -0.5, layout == "causal")
    a = attn.permute(0, 2, 3, 1)[..., None]  # (B, N, N, H, 1)
    o = (a * _heads(v1, heads)).sum(2).flatten(-2)
    if "v" in relative:
        v2 = _pairs(F.linear(h, sd["to_v1.weight"]), "v", sd["to_v2.unique_params"], K, Q)
        o2 = (a * _heads(v2, heads)).sum(2).flatten(-2)
        o = (1 - weight) * o + weight * F.linear(o2, sd["to_v3.weight"])
    return _out(sd, o)


def random_official_state(*, kind, variant, dim, heads, dim_head, size, dim_relenc=16, seed=0):
    """A random state dict with the names and shapes of the reference attention module."""
    g = torch.Generator().manual_seed(seed)
    alpha = variant.lower().startswith("alpha_")
    relative = variant.lower().removeprefix("alpha_")
    layout = "2d_cls" if kind == "vit" else "causal"
    R = spec_rows(layout, size)[0]
    D, E = heads * dim_head, heads * dim_relenc

    def rnd(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    sd = {"norm.weight": 1 + 0.1 * rnd(dim, scale=1), "norm.bias": 0.1 * rnd(dim, scale=1)}
    if alpha:
        sd["to_qkv.weight"] = rnd(3 * D, dim)
        if "q" in relative or "k" in relative:
            sd["to_q1.weight"], sd["to_k1.weight"] = rnd(E, dim), rnd(E, dim)
        for r in relative:
            sd[f"to_{r}2.unique_params"] = rnd(R, E, E, scale=E ** -0.5)
        if "v" in relative:
            sd["to_v1.weight"], sd["to_v3.weight"] = rnd(E, dim), rnd(D, E)
    else:
        for r in relative:
            sd[f"to_{r}.unique_params"] = rnd(R, dim, D, scale=dim ** -0.5)
        shared = "".join(r for r in ROLES if r not in relative)
        if shared:
            sd[f"to_{shared}.weight"] = rnd(len(shared) * D, dim)
    if not (heads == 1 and dim_head == dim):
        sd["to_out.0.weight"], sd["to_out.0.bias"] = rnd(dim, D), 0.1 * rnd(dim, scale=1)
    if kind == "gpt":
        sd["causal"] = torch.tril(torch.ones(size, size)).view(1, 1, size, size)
    return sd


def reference_forward(sd, x, *, alpha, **kwargs):
    return (alpha_translution if alpha else translution)(sd, x, **kwargs)


def kaiming_bound(fan_in: int) -> float:
    """The bound of kaiming_uniform_(a=√5) for a tensor whose dim 1 is ``fan_in``·(receptive field)."""
    return math.sqrt(6 / ((1 + 5) * fan_in))


def rope_2d(t, h, w, cls=True, base=10000.0):
    """2D RoPE on (B, H, N, d): channel c rotates with c + d/2; row angles in the first d/4 pairs."""
    d = t.shape[-1]
    quarter = d // 4
    inv = torch.tensor([base ** (-(2.0 * f) / (d // 2)) for f in range(quarter)], dtype=torch.float32)
    angles = torch.zeros(h * w, d // 2)
    for p in range(h * w):
        r, c = divmod(p, w)
        angles[p, :quarter] = r * inv
        angles[p, quarter:] = c * inv
    cos, sin = angles.cos().repeat(1, 2).to(t.dtype), angles.sin().repeat(1, 2).to(t.dtype)
    head, g = (t[..., :1, :], t[..., 1:, :]) if cls else (t[..., :0, :], t)
    x1, x2 = g[..., : d // 2], g[..., d // 2:]
    rotated = torch.cat([x1 * cos[:, : d // 2] - x2 * sin[:, : d // 2], x2 * cos[:, d // 2:] + x1 * sin[:, d // 2:]], -1)
    return torch.cat([head, rotated], dim=-2)


def attention(sd, x, *, heads, dim_head, causal=False, rope=None):
    """Ordinary pre-norm attention on a reference state dict (to_qkv, to_out); rope=(h, w) adds 2D RoPE."""
    h = F.layer_norm(x, x.shape[-1:], sd["norm.weight"], sd["norm.bias"])
    q, k, v = (t.unflatten(-1, (heads, dim_head)).transpose(1, 2) for t in F.linear(h, sd["to_qkv.weight"]).chunk(3, -1))
    if rope is not None:
        q, k = rope_2d(q, *rope), rope_2d(k, *rope)
    attn = _softmax_scores(q @ k.transpose(-1, -2) * dim_head ** -0.5, causal)
    return _out(sd, (attn @ v).transpose(1, 2).flatten(-2))


def _sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _trunk(sd, x, *, depth, mixer):
    for i in range(depth):
        x = mixer(i, _sub(sd, f"translution.layers.{i}.0."), x) + x
        ff = _sub(sd, f"translution.layers.{i}.1.net.")
        y = F.layer_norm(x, x.shape[-1:], ff["0.weight"], ff["0.bias"])
        x = F.linear(F.gelu(F.linear(y, ff["1.weight"], ff["1.bias"])), ff["4.weight"], ff["4.bias"]) + x
    return F.layer_norm(x, x.shape[-1:], sd["translution.norm.weight"], sd["translution.norm.bias"])


def _mixer(kind_layout, size, actual, variant, heads, dim_head):
    is_alpha = variant.lower().startswith("alpha_")
    relative = variant.lower().removeprefix("alpha_")

    def run(i, block_sd, x):
        if not any(k.startswith("to_") and k.split(".")[0] not in ("to_qkv", "to_out") for k in block_sd):
            rope = actual if "rope.cos_cached" in block_sd else None
            return attention(block_sd, x, heads=heads, dim_head=dim_head, causal=kind_layout == "causal", rope=rope)
        return reference_forward(block_sd, x, alpha=is_alpha, layout=kind_layout, size=size, heads=heads,
                                 dim_head=dim_head, relative=relative, actual=actual if kind_layout != "causal" else x.shape[1])
    return run


def vit(sd, img, *, variant, patch, grid, heads, dim_head, pool="cls"):
    """The reference ViT forward: patches via unfold, (p1 p2 c) order, LN-Linear-LN, class token first."""
    b, c, hh, ww = img.shape
    h, w = hh // patch, ww // patch
    patches = F.unfold(img, patch, stride=patch).view(b, c, patch, patch, h * w).permute(0, 4, 2, 3, 1).flatten(2)
    pe = _sub(sd, "to_patch_embedding.")
    x = F.layer_norm(patches, patches.shape[-1:], pe["1.weight"], pe["1.bias"])
    x = F.linear(x, pe["2.weight"], pe["2.bias"])
    x = F.layer_norm(x, x.shape[-1:], pe["3.weight"], pe["3.bias"])
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], dim=1)
    if "pos_embedding" in sd:
        x = x + sd["pos_embedding"][:, : x.shape[1]]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("translution.layers."))
    x = _trunk(sd, x, depth=depth, mixer=_mixer("2d_cls", grid, (h, w), variant, heads, dim_head))
    x = x.mean(1) if pool == "mean" else x[:, 0]
    return F.linear(x, sd["mlp_head.weight"], sd["mlp_head.bias"])


def gpt(sd, tokens, *, variant, seq_len, heads, dim_head):
    """The reference GPT forward: embeddings, causal blocks, trunk LayerNorm, head LayerNorm, LM head."""
    x = F.embedding(tokens, sd["wte.weight"])
    if "wpe.weight" in sd:
        x = x + sd["wpe.weight"][: tokens.shape[1]]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("translution.layers."))
    x = _trunk(sd, x, depth=depth, mixer=_mixer("causal", seq_len, None, variant, heads, dim_head))
    x = F.layer_norm(x, x.shape[-1:], sd["norm.weight"], sd["norm.bias"])
    return F.linear(x, sd["output_head.weight"])
