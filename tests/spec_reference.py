"""Every op of the package written literally from the spec (../shared/spec), for the op tests.

Nothing here imports translution_ext: index maps come from tests/translution_reference.py (the
spec's formulas as loops), and each op is explicit loops over tokens, pixels, window positions or
shifts with plain torch arithmetic, so a wrong sign, index or scale in the package cannot also be
in the reference.  Differentiable (autograd through the loops); small shapes only.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch


# --------------------------------------------------------------------------------------------
# Translution attention (translution.md §3, §4): per head the role vector is [shared | relative]
#     q_ij = [q_i | q_source_i · q_table[query_index[i, j]]]
#     k_ij = [k_j | k_source_j · k_table[key_index[i, j]]]          (v likewise)
#     o_i  = Σ_j softmax_j(scale · <q_ij, k_ij>) v_ij                (j > i masked when causal)
# --------------------------------------------------------------------------------------------

def _role_row(role, i, keys, shared, source, table, index, heads):
    """(B, len(keys), H, d): the role's vectors of the pairs (i, j), j in keys.  The query side reads
    token i, the key side token j; the relative part is an explicit gather of the table rows."""
    tokens = [i] * len(keys) if role == "q" else keys
    parts = []
    if shared is not None:
        parts.append(shared[:, tokens].unflatten(-1, (heads, -1)))
    if table is not None:
        w = table[index[i, keys].long()]  # (len(keys), C, D): the row of every pair
        projected = (source[:, tokens, :, None] * w).sum(-2)  # x_token · W[row]
        parts.append(projected.unflatten(-1, (heads, -1)))
    return torch.cat(parts, dim=-1)


def translution_attention(*, key_index, query_index, heads, q=None, k=None, v=None, q_table=None, k_table=None,
                          v_table=None, q_source=None, k_source=None, v_source=None, x=None, scale=None,
                          causal=False):
    """The fused op's contract, one query token i at a time (its keys j <= i when causal)."""
    sources = {r: (s if s is not None else x) for r, s in (("q", q_source), ("k", k_source), ("v", v_source))}
    roles = {"q": (q, sources["q"], q_table, query_index), "k": (k, sources["k"], k_table, key_index),
             "v": (v, sources["v"], v_table, key_index)}
    n = key_index.shape[0]
    rows = []
    for i in range(n):
        keys = list(range(i + 1 if causal else n))
        qv, kv, vv = (_role_row(r, i, keys, *roles[r], heads) for r in "qkv")  # (B, keys, H, d)
        s = qv.shape[-1] ** -0.5 if scale is None else scale
        logits = s * (qv * kv).sum(-1)  # (B, keys, H)
        weights = torch.exp(logits - logits.max(1, keepdim=True).values)
        weights = weights / weights.sum(1, keepdim=True)
        rows.append((weights[..., None] * vv).sum(1).flatten(-2))  # Σ_j a_ij v_ij
    return torch.stack(rows, dim=1)


def relative_offset_projection(x, weight, index, side="key"):
    """out[b, i, j] = x[b, j] · W[index[i, j]] (key side) or x[b, i] · W[index[i, j]] (query side),
    one explicit gather of the rows per query token i."""
    rows = []
    for i in range(index.shape[0]):
        w = weight[index[i].long()]  # (Nk, C, D): the row of every pair (i, j)
        src = x if side == "key" else x[:, i:i + 1].expand(-1, index.shape[1], -1)
        rows.append((src[..., None] * w).sum(-2))
    return torch.stack(rows, dim=1)


# --------------------------------------------------------------------------------------------
# X-volution (xvolution.md)
# --------------------------------------------------------------------------------------------

def neighbour_shifts(lengths: Sequence[int] = (1,)) -> List[Tuple[int, int]]:
    """D: the 8 neighbour offsets (dy, dx) ∈ {−1, 0, 1}² \\ {(0, 0)}, scaled by each shift length."""
    return [(n * dy, n * dx) for n in lengths for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def shifted(x, dy, dx):
    """S_δ(X)[p] = X[p + δ], zero outside the image: one pixel at a time."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for y in range(h):
        for c in range(w):
            if 0 <= y + dy < h and 0 <= c + dx < w:
                out[..., y, c] = x[..., y + dy, c + dx]
    return out


def pixel_shift_products(x, shifts):
    """T(X) = concat over δ of X ⊙ S_δ(X): channel block s holds shift s."""
    return torch.cat([x * shifted(x, dy, dx) for dy, dx in shifts], dim=1)


def conv2d(x, weight, bias, stride, padding):
    """A plain convolution as the sum over kernel taps of shifted, strided input slices."""
    b, ci, h, w = x.shape
    co, _, kh, kw = weight.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    xp = x.new_zeros(b, ci, h + 2 * padding, w + 2 * padding)
    xp[:, :, padding:padding + h, padding:padding + w] = x
    out = x.new_zeros(b, co, ho, wo)
    for ky in range(kh):
        for kx in range(kw):
            patch = xp[:, :, ky: ky + stride * (ho - 1) + 1: stride, kx: kx + stride * (wo - 1) + 1: stride]
            out = out + torch.einsum("bchw,oc->bohw", patch, weight[:, :, ky, kx])
    return out if bias is None else out + bias[:, None, None]


def xvolution_deployed(x, weight, bias, shifts, stride=1):
    """Deployed: Y = Conv_K(concat(X, T(X)); W*, b*), padding K // 2."""
    features = torch.cat([x, pixel_shift_products(x, shifts)], dim=1)
    return conv2d(features, weight, bias, stride, weight.shape[-1] // 2)


def fold(branches, in_channels: int, kernel_size: int):
    """Re-parameterisation steps 1-3: per branch (W, γ, β, μ, var, eps, input channel offset),
    t = γ / sqrt(var + eps), W' = W·t, b' = β − μ·t, zero-padded to K × K at the centre and placed
    at its input channels; b* = Σ b'.  Output channel by output channel."""
    co = branches[0][0].shape[0]
    w_star = branches[0][0].new_zeros(co, in_channels, kernel_size, kernel_size)
    b_star = branches[0][0].new_zeros(co)
    for weight, gamma, beta, mean, var, eps, offset in branches:
        k = weight.shape[-1]
        pad = (kernel_size - k) // 2
        for o in range(co):
            t = gamma[o] / math.sqrt(float(var[o]) + eps)
            w_star[o, offset: offset + weight.shape[1], pad: pad + k, pad: pad + k] += weight[o] * t
            b_star[o] += beta[o] - mean[o] * t
    return w_star, b_star


# --------------------------------------------------------------------------------------------
# ACmix window attention (acmix.md, "Attention path")
# --------------------------------------------------------------------------------------------

def reflect(i: int, n: int) -> int:
    """Reflection padding (the edge pixel is not repeated): −1 -> 1, n -> n − 2."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def acmix_window_attention(q, k, v, pe, heads: int, window: int, stride: int = 1):
    """Per head and output pixel (yc, xc) = (oy·s, ox·s), over window positions u in row-major order:
        logit[u] = Σ_d (q·hd^-1/2)[d] · (k_pad[d, u] + pe_centre[d] − pe_pad[d, u]),
        A = softmax over the window,  out = Σ_u A[u] · v_pad[:, u].
    q, k, v: (B, heads·hd, H, W), head-major channels; pe: (1, hd, H, W) or (hd, H, W)."""
    b, c, h, w = q.shape
    hd = c // heads
    pe = pe.reshape(hd, h, w)
    half = window // 2
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    qh, kh, vh = (t.reshape(b, heads, hd, h, w) for t in (q, k, v))
    out = q.new_zeros(b, heads, hd, ho, wo)
    for oy in range(ho):
        for ox in range(wo):
            yc, xc = oy * stride, ox * stride
            cells = [(reflect(yc + du - half, h), reflect(xc + dv - half, w))
                     for du in range(window) for dv in range(window)]
            ys, xs = [y for y, _ in cells], [x for _, x in cells]
            k_win = kh[..., ys, xs]  # (B, heads, hd, U)
            v_win = vh[..., ys, xs]
            pe_win = pe[:, ys, xs]  # (hd, U)
            query = qh[..., yc, xc] * hd ** -0.5  # (B, heads, hd)
            logits = (query[..., None] * (k_win + pe[:, yc, xc, None] - pe_win)).sum(2)  # (B, heads, U)
            a = torch.exp(logits - logits.max(-1, keepdim=True).values)
            a = a / a.sum(-1, keepdim=True)
            out[..., oy, ox] = (a[:, :, None] * v_win).sum(-1)
    return out.reshape(b, c, ho, wo)
