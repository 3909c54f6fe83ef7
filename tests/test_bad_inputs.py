"""Every bad argument of a public function or module gets an error that names the argument and
the expected value, raised before any arithmetic (never ZeroDivisionError, IndexError, KeyError
or a reshape error)."""
from __future__ import annotations

import pytest
import torch

import translution_ext
from translution_ext import compat, indexing, reparameterize_model
from translution_ext.models import GPT, Block, FeedForward, ViT, create_vit
from translution_ext.nn import (ACmix, ACmixBottleneck, ACmixWindowAttention, AlphaTranslution, Attention,
                                RotaryEmbedding2D, TokenLayout, Translution, XVolution, XVolutionSA,
                                shifted_window_mask)
from translution_ext.nn.functional import backend_unavailable_reason, pair_scores, resolve_backend
from translution_ext.ops import (acmix_window_attention, pixel_shift_products, relative_offset_projection,
                                 shift_offsets, translution_attention, xvolution_fold)


def case(call, exc, match, id):
    return pytest.param(call, exc, match, id=id)


def check(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- ops

def acmix_args(**change):
    """acmix_window_attention arguments, C = 8 channels in 2 heads (hd = 4) on a 5x5 map, with changes."""
    q = torch.randn(2, 8, 5, 5)
    args = dict(q=q, k=q.clone(), v=q.clone(), pe=torch.randn(1, 4, 5, 5), heads=2, window=3, stride=1)
    args.update(change)
    return args


ACMIX_OP = [
    case(dict(pe=torch.randn(2, 4, 5, 5)), ValueError, r"pe must have batch size 1 .*got shape \(2, 4, 5, 5\)",
         "pe-batch-2"),
    case(dict(heads=0), ValueError, "heads must be a positive int, got 0", "heads-0"),
    case(dict(heads=-2), ValueError, "heads must be a positive int, got -2", "heads-negative"),
    case(dict(heads=16), ValueError, "heads must divide C == 8, got 16", "heads-above-C"),
    case(dict(heads=True), TypeError, "heads must be a positive int, got True", "heads-bool"),
    case(dict(heads=2.0), TypeError, r"heads must be a positive int, got 2\.0", "heads-float"),
    case(dict(q=torch.randn(8)), ValueError, r"q must be a 4-D tensor \(B, C, H, W\), got shape \(8,\)", "q-1d"),
    case(dict(q=[1.0]), TypeError, "q must be a torch.Tensor, got list", "q-list"),
    case(dict(window=3.0), TypeError, r"window must be a positive odd int, got 3\.0", "window-float"),
    case(dict(stride=0), ValueError, "stride must be a positive int, got 0", "stride-0"),
]


@pytest.mark.parametrize("path", ["native", "reference"])
@pytest.mark.parametrize("change,exc,match", ACMIX_OP)
def test_acmix_window_attention(change, exc, match, path, monkeypatch):
    if path == "reference":
        monkeypatch.setattr(translution_ext._native, "ACMIX_DEVICE_TYPES", frozenset())
    check(lambda: acmix_window_attention(**acmix_args(**change)), exc, "acmix_window_attention: " + match)


X4 = torch.randn(1, 2, 4, 4)


@pytest.mark.parametrize("call,exc,match", [
    case(lambda: pixel_shift_products(X4, [(0.5, 1)]), TypeError,
         r"shifts\[0\] must be a pair of ints \(dy, dx\), got \(0\.5, 1\)", "half-pixel"),
    case(lambda: pixel_shift_products(X4, [(1, -1), (True, 1)]), TypeError,
         r"shifts\[1\] must be a pair of ints \(dy, dx\), got \(True, 1\)", "bool"),
    case(lambda: pixel_shift_products(X4, [(1, 1, 1)]), ValueError,
         r"shifts\[0\] must be a pair of ints \(dy, dx\), got \(1, 1, 1\)", "triple"),
    case(lambda: pixel_shift_products(X4, [1, 0]), TypeError, r"shifts\[0\] must be a pair of ints \(dy, dx\), got 1",
         "flat"),
    case(lambda: pixel_shift_products(X4, None), TypeError, r"shifts must be a non-empty list of \(dy, dx\) pairs",
         "none"),
    case(lambda: shift_offsets([True]), ValueError, "shift_lengths must be a non-empty sequence of positive ints",
         "lengths-bool"),
    case(lambda: shift_offsets(2), TypeError, "shift_lengths must be a non-empty sequence of positive ints, got 2",
         "lengths-int"),
])
def test_pixel_shift_products(call, exc, match):
    check(call, exc, match)


def attention_args(**change):
    """translution_attention arguments: x (2, 5, 8), 1D maps, three (9, 8, 8) tables, 2 heads."""
    ix = indexing.offset_index_1d(5)
    w = torch.randn(ix.num_classes, 8, 8)
    args = dict(x=torch.randn(2, 5, 8), key_index=ix.key, query_index=ix.query, heads=2, q_table=w, k_table=w,
                v_table=w)
    args.update(change)
    return args


ATTENTION_OP = [
    case(dict(heads=0), ValueError, "heads must be a positive int, got 0", "heads-0"),
    case(dict(heads=-1), ValueError, "heads must be a positive int, got -1", "heads-negative"),
    case(dict(heads=16), ValueError, r"q_table must have shape \(R, C, H\*d\) .*H\*d a multiple of heads == 16",
         "heads-above-width"),
    case(dict(heads=3), ValueError, r"q_table must have shape \(R, C, H\*d\) .*H\*d a multiple of heads == 3",
         "heads-not-dividing"),
    case(dict(heads=True), TypeError, "heads must be a positive int, got True", "heads-bool"),
    case(dict(q_table=None, k_table=None, v_table=None), ValueError, "no role is given", "no-role"),
    case(dict(scale="a"), TypeError, "scale must be a real number or None, got 'a'", "scale-str"),
    case(dict(causal=1), TypeError, "causal must be a bool, got 1", "causal-int"),
    case(dict(x=[1.0]), TypeError, "x must be a torch.Tensor, got list", "x-list"),
    case(dict(key_index=[0]), TypeError, "key_index must be a torch.Tensor, got list", "index-list"),
    case(dict(q_table=None, q_source=torch.randn(2, 5, 8), q=torch.randn(2, 5, 8)), ValueError,
         "q_source and q_table must be given together", "source-without-table"),
    case(dict(x=torch.randn(5, 8)), ValueError, r"inputs must be 3-D tensors \(B, N, \.\.\.\), got shape \(5, 8\)",
         "x-2d"),
]


@pytest.mark.parametrize("path", ["native", "reference"])
@pytest.mark.parametrize("change,exc,match", ATTENTION_OP)
def test_translution_attention(change, exc, match, path, monkeypatch):
    if path == "reference":
        monkeypatch.setattr(translution_ext._native, "FUSED_DEVICE_TYPES", frozenset())
    args = attention_args(**change)
    check(lambda: translution_attention(args.pop("x"), **args), exc, "translution_attention: " + match)


def test_translution_attention_index_range_on_the_reference_path(monkeypatch):
    monkeypatch.setattr(translution_ext._native, "FUSED_DEVICE_TYPES", frozenset())
    args = attention_args()
    args["key_index"] = args["key_index"] + 100
    check(lambda: translution_attention(args.pop("x"), **args), ValueError,
          r"key_index values must lie in \[0, R\) with R = k_table.size\(0\) == 9, got min 100")


def fold_branch(bn=True):
    return (torch.randn(4, 2, 3, 3), torch.nn.BatchNorm2d(4).eval() if bn else None, 0)


@pytest.mark.parametrize("call,exc,match", [
    case(lambda: relative_offset_projection([1.0], torch.randn(3, 2, 2), torch.zeros(2, 2, dtype=torch.long)),
         TypeError, "relative_offset_projection: x must be a torch.Tensor, got list", "projection-x-list"),
    case(lambda: xvolution_fold([fold_branch()], 0, 3), ValueError,
         "xvolution_fold: in_channels must be a positive int, got 0", "fold-in-channels"),
    case(lambda: xvolution_fold([fold_branch()], 2, 3.0), TypeError,
         r"xvolution_fold: kernel_size must be a positive int, got 3\.0", "fold-kernel-float"),
    case(lambda: xvolution_fold([], 2, 3), ValueError, "xvolution_fold: branches must hold at least one branch",
         "fold-no-branch"),
    case(lambda: xvolution_fold([fold_branch(bn=False)], 2, 3), TypeError,
         r"xvolution_fold: branches\[0\] must be \(weight tensor, BatchNorm2d, int input channel offset\), "
         r"got \('Tensor', 'NoneType', 'int'\)", "fold-no-batchnorm"),
])
def test_other_ops(call, exc, match):
    check(call, exc, match)


# ---------------------------------------------------------------------- indexing

@pytest.mark.parametrize("call,exc,match", [
    case(lambda: indexing.offset_index_2d((3,)), ValueError, r"grid must be two positive ints \(Hg, Wg\), got \(3,\)",
         "grid-one-int"),
    case(lambda: indexing.offset_index_2d(4), TypeError, r"grid must be two positive ints \(Hg, Wg\), got 4",
         "grid-int"),
    case(lambda: indexing.offset_index_2d_cls(4), TypeError, r"grid must be two positive ints \(Hg, Wg\), got 4",
         "grid-int-cls"),
    case(lambda: indexing.offset_index_2d((3, 3), 2), TypeError, r"size must be two positive ints \(h, w\), got 2",
         "size-int"),
    case(lambda: indexing.offset_index_2d((3, 0)), ValueError,
         r"grid must be two positive ints \(Hg, Wg\), got \(3, 0\)", "grid-zero"),
    case(lambda: indexing.offset_index_1d(4, 8), ValueError,
         r"^length must be <= 4 \(max_len, the size the tables cover\), got 8$", "length-above-max-len"),
    case(lambda: indexing.offset_index_2d((3, 3), (1, 4)), ValueError,
         r"^size\[1\] must be <= 3 \(grid\[1\], the size the tables cover\), got 4$", "size-above-grid"),
    case(lambda: indexing.offset_index_1d(True), TypeError, "max_len must be a positive int, got True", "max-len-bool"),
    case(lambda: indexing.offset_index_causal_1d(2.0), TypeError, r"max_len must be a positive int, got 2\.0",
         "max-len-float"),
    case(lambda: indexing.num_classes_1d(0), ValueError, "max_len must be a positive int, got 0", "classes-1d"),
    case(lambda: indexing.num_classes_2d(4), TypeError, r"grid must be two positive ints \(Hg, Wg\), got 4",
         "classes-2d"),
])
def test_indexing(call, exc, match):
    check(call, exc, match)


# ------------------------------------------------------------------ constructors

def tiny_vit(**kw):
    args = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    return ViT(**{**args, **kw})


def tiny_gpt(**kw):
    args = dict(vocab_size=5, seq_len=4, dim=8, depth=1, heads=2, dim_head=4, mlp_dim=8)
    return GPT(**{**args, **kw})


ONE_D = dict(layout="1d", max_len=4)


@pytest.mark.parametrize("call,exc,match", [
    case(lambda: Translution(8, heads=0, **ONE_D), ValueError, "heads must be a positive int, got 0", "tln-heads-0"),
    case(lambda: Translution(8, heads=True, **ONE_D), TypeError, "heads must be a positive int, got True",
         "tln-heads-bool"),
    case(lambda: Translution(8, heads=2, dim_head=-4, **ONE_D), ValueError, "dim_head must be a positive int, got -4",
         "tln-dim-head"),
    case(lambda: Translution(0, **ONE_D), ValueError, "dim must be a positive int, got 0", "tln-dim"),
    case(lambda: Translution(8, dropout="a", **ONE_D), TypeError, r"dropout must be in \[0, 1\), got 'a'",
         "tln-dropout"),
    case(lambda: Translution(8, layout="2d", grid=4), TypeError, r"grid must be two positive ints \(Hg, Wg\), got 4",
         "tln-grid-int"),
    case(lambda: AlphaTranslution(8, dim_relenc=0, **ONE_D), ValueError, "dim_relenc must be a positive int, got 0",
         "alpha-relenc"),
    case(lambda: AlphaTranslution(8, alpha="x", **ONE_D), TypeError, r"alpha must be in \[0, 1\], got 'x'",
         "alpha-alpha"),
    case(lambda: TokenLayout("1d", max_len=True), TypeError, "max_len must be a positive int, got True",
         "layout-max-len"),
    case(lambda: Attention(8, heads=0), ValueError, "heads must be a positive int, got 0", "attention-heads"),
    case(lambda: Attention(8, heads=2, dim_head=-1), ValueError, "dim_head must be a positive int, got -1",
         "attention-dim-head"),
    case(lambda: RotaryEmbedding2D(0, (2, 2)), ValueError, "dim_head must be a positive int, got 0", "rope-dim-head"),
    case(lambda: RotaryEmbedding2D(8, 2), TypeError, r"grid must be two positive ints \(Hg, Wg\), got 2", "rope-grid"),
    case(lambda: ACmix(8, 8, head=0), ValueError, "head must be a positive int, got 0", "acmix-head-0"),
    case(lambda: ACmix(8, 8, head=2.0), TypeError, r"head must be a positive int, got 2\.0", "acmix-head-float"),
    case(lambda: ACmix(-4, 8), ValueError, "in_planes must be a positive int, got -4", "acmix-in-planes"),
    case(lambda: ACmix(4, -8, head=2), ValueError, "out_planes must be a positive int, got -8", "acmix-out-planes"),
    case(lambda: ACmix(8, 8, kernel_att=3.0), TypeError, r"kernel_att must be a positive odd int, got 3\.0",
         "acmix-kernel-float"),
    case(lambda: ACmixBottleneck(8, 0), ValueError, "planes must be a positive int, got 0", "bottleneck-planes"),
    case(lambda: ACmixBottleneck(8, 8, expansion=0), ValueError, "expansion must be a positive int, got 0",
         "bottleneck-expansion"),
    case(lambda: ACmixWindowAttention(8, 2, 0), ValueError, "num_heads must be a positive int, got 0",
         "window-attention-heads"),
    case(lambda: ACmixWindowAttention(8, 0, 2), ValueError, "window_size must be a positive int, got 0",
         "window-attention-window"),
    case(lambda: ACmixWindowAttention(-8, 2, 2), ValueError, "dim must be a positive int, got -8",
         "window-attention-dim"),
    case(lambda: ACmixWindowAttention(8, 2, 2, attn_drop=1.5), ValueError, r"attn_drop must be in \[0, 1\), got 1\.5",
         "window-attention-dropout"),
    case(lambda: shifted_window_mask(4, 4, 2, 0), ValueError, "shift must be a positive int, got 0", "mask-shift-0"),
    case(lambda: shifted_window_mask(4, 4, 2, 2), ValueError, r"shift must be in \[1, window\) = \[1, 2\), got 2",
         "mask-shift-window"),
    case(lambda: shifted_window_mask(4, 4, 3, 1), ValueError, "h and w must be multiples of window = 3, got 4 x 4",
         "mask-window"),
    case(lambda: XVolution(-3, 4), ValueError, "in_channels must be a positive int, got -3", "xvolution-in"),
    case(lambda: XVolution(3, 0), ValueError, "out_channels must be a positive int, got 0", "xvolution-out"),
    case(lambda: XVolution(3, 4, stride=0), ValueError, "stride must be a positive int, got 0", "xvolution-stride"),
    case(lambda: XVolutionSA(-3, 4), ValueError, "in_channels must be a positive int, got -3", "xvolution-sa-in"),
    case(lambda: XVolutionSA(3, 4, heads=2.0), TypeError,
         r"heads must be a positive divisor of out_channels = 4, got 2\.0", "xvolution-sa-heads"),
    case(lambda: FeedForward(0, 4), ValueError, "dim must be a positive int, got 0", "ff-dim"),
    case(lambda: FeedForward(4, 0), ValueError, "hidden_dim must be a positive int, got 0", "ff-hidden"),
    case(lambda: Block(1, FeedForward(4, 4)), TypeError, "mixer must be an nn.Module, got int", "block-mixer"),
    case(lambda: tiny_vit(patch_size=0), ValueError, "patch_size must be a positive int, got 0", "vit-patch-0"),
    case(lambda: tiny_vit(image_size=(8,)), ValueError,
         r"image_size must be a positive int or two positive ints \(H, W\), got \(8,\)", "vit-image-one-int"),
    case(lambda: tiny_vit(num_classes=0), ValueError, "num_classes must be a positive int, got 0", "vit-classes"),
    case(lambda: tiny_vit(depth=0), ValueError, "depth must be a positive int, got 0", "vit-depth"),
    case(lambda: tiny_vit(channels=0), ValueError, "channels must be a positive int, got 0", "vit-channels"),
    case(lambda: tiny_vit(mixer="attention", heads=0), ValueError, "heads must be a positive int, got 0",
         "vit-attention-heads"),
    case(lambda: tiny_gpt(vocab_size=0), ValueError, "vocab_size must be a positive int, got 0", "gpt-vocab"),
    case(lambda: tiny_gpt(seq_len=0), ValueError, "seq_len must be a positive int, got 0", "gpt-seq-len"),
    case(lambda: tiny_gpt(emb_dropout=1.0), ValueError, r"emb_dropout must be in \[0, 1\), got 1\.0", "gpt-dropout"),
    case(lambda: create_vit("tiny", heads=0), ValueError, "heads must be a positive int, got 0", "create-vit-heads"),
    case(lambda: reparameterize_model("model"), TypeError, "model must be an nn.Module, got str", "reparameterize"),
    case(lambda: backend_unavailable_reason("fast", "cpu", False), ValueError,
         "backend must be one of 'auto', 'fused', 'native', 'reference', got 'fast'", "backend-name"),
    case(lambda: pair_scores(torch.randn(1, 3, 8), torch.randn(1, 3, 8), 0), ValueError,
         "heads must be a positive int, got 0", "pair-scores-heads-0"),
    case(lambda: pair_scores(torch.randn(1, 3, 8), torch.randn(1, 3, 8), 3), ValueError,
         r"q.size\(-1\) must be a multiple of heads == 3, got \(1, 3, 8\)", "pair-scores-heads-3"),
])
def test_constructors_and_functions(call, exc, match):
    check(call, exc, match)


def test_resolve_backend_takes_a_device_name():
    assert resolve_backend("reference", "cpu") == "reference"


# ------------------------------------------------------------- module inputs

def f32_block(cls):
    return cls(8, heads=2, dim_head=4, **ONE_D)


@pytest.mark.parametrize("call,exc,match", [
    case(lambda: f32_block(Translution)(torch.randn(1, 4, 8, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the Translution block's parameters \(torch.float32\), got torch.float64",
         "translution-float64"),
    case(lambda: f32_block(Translution)(torch.randn(1, 4, 8, dtype=torch.bfloat16)), TypeError,
         r"x must have the dtype of the Translution block's parameters \(torch.float32\), got torch.bfloat16",
         "translution-bfloat16"),
    case(lambda: f32_block(Translution)(torch.randn(1, 4, 8, device="meta")), ValueError,
         r"x must be on the device of the Translution block's parameters \(cpu\), got meta", "translution-device"),
    case(lambda: f32_block(AlphaTranslution)(torch.randn(1, 4, 8, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the AlphaTranslution block's parameters \(torch.float32\), got torch.float64",
         "alpha-float64"),
    case(lambda: f32_block(AlphaTranslution)(torch.randn(1, 4, 8, dtype=torch.bfloat16)), TypeError,
         r"x must have the dtype of the AlphaTranslution block's parameters \(torch.float32\), got torch.bfloat16",
         "alpha-bfloat16"),
    case(lambda: Attention(8, 2, 4)(torch.randn(1, 4, 8, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the Attention block's parameters \(torch.float32\), got torch.float64",
         "attention-float64"),
    case(lambda: Attention(8, 2, 4, rope_grid=(2, 2))(torch.randn(1, 4, 8)), ValueError,
         r"x.size\(1\) = 4 does not match the full grid \(2, 2\) \(5 tokens with the class token\)",
         "attention-rope-tokens"),
    case(lambda: FeedForward(8, 16)(torch.randn(1, 4, 8, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the FeedForward block's parameters \(torch.float32\), got torch.float64",
         "feedforward-float64"),
    case(lambda: tiny_vit()(torch.randn(1, 3, 8, 8, dtype=torch.float64)), TypeError,
         r"img must have the dtype of the ViT's parameters \(torch.float32\), got torch.float64", "vit-float64"),
    case(lambda: tiny_vit()(torch.randn(1, 3, 8, 8, dtype=torch.bfloat16)), TypeError,
         r"img must have the dtype of the ViT's parameters \(torch.float32\), got torch.bfloat16", "vit-bfloat16"),
    case(lambda: tiny_vit()(torch.randn(1, 3, 8, 8, device="meta")), ValueError,
         r"img must be on the device of the ViT's parameters \(cpu\), got meta", "vit-device"),
    case(lambda: tiny_gpt()(torch.tensor([[1, 5]])), ValueError,
         r"tokens must be ids in \[0, vocab_size\) = \[0, 5\), got min 1 and max 5", "gpt-token-above-vocab"),
    case(lambda: tiny_gpt()(torch.tensor([[-1, 2]])), ValueError,
         r"tokens must be ids in \[0, vocab_size\) = \[0, 5\), got min -1 and max 2", "gpt-token-negative"),
    case(lambda: tiny_gpt()(torch.zeros(1, 2, dtype=torch.long, device="meta")), ValueError,
         r"tokens must be on the device of the GPT's parameters \(cpu\), got meta", "gpt-device"),
    case(lambda: ACmix(4, 8, kernel_att=3, head=2)(torch.randn(1, 4, 5, 5, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the ACmix block's parameters \(torch.float32\), got torch.float64",
         "acmix-float64"),
    case(lambda: ACmixBottleneck(8, 4, kernel_att=3, head=2)(torch.randn(1, 8, 5, 5, dtype=torch.float64)),
         TypeError, r"x must have the dtype of the ACmixBottleneck block's parameters \(torch.float32\)",
         "bottleneck-float64"),
    case(lambda: XVolution(3, 4)(torch.randn(1, 3, 5, 5, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the XVolution block's parameters \(torch.float32\), got torch.float64",
         "xvolution-float64"),
    case(lambda: XVolutionSA(3, 4)(torch.randn(1, 3, 5, 5, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the XVolutionSA block's parameters \(torch.float32\), got torch.float64",
         "xvolution-sa-float64"),
    case(lambda: ACmixWindowAttention(8, 2, 2)(torch.randn(1, 4, 4, 8, dtype=torch.float64)), TypeError,
         r"x must have the dtype of the ACmixWindowAttention block's parameters \(torch.float32\)",
         "window-attention-float64"),
    case(lambda: ACmixWindowAttention(8, 2, 2)(torch.randn(4, 4, 8)), ValueError,
         r"x must have shape \(B, H, W, 8\) with H and W multiples of window_size = 2, got \(4, 4, 8\)",
         "window-attention-3d"),
    case(lambda: ACmixWindowAttention(8, 2, 2)(torch.randn(1, 4, 4, 8), torch.zeros(3, 4, 4)), ValueError,
         r"mask must have shape \(nW, M², M²\) = \(4, 4, 4\) for x of shape \(1, 4, 4, 8\).*got \(3, 4, 4\)",
         "window-attention-mask"),
])
def test_module_inputs(call, exc, match):
    check(call, exc, match)


def test_autocast_accepts_low_precision_inputs():
    # Under autocast a float32 block takes the autocast dtype: only a dtype mismatch without it is an error.
    block = f32_block(Translution)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(torch.randn(1, 4, 8, dtype=torch.bfloat16)).shape == (1, 4, 8)


# ------------------------------------------------------------------------ compat

def vit_state():
    return compat.export_official_vit(ViT(image_size=8, patch_size=4, num_classes=3, dim=8, depth=2, heads=2,
                                          dim_head=4, mlp_dim=8, relative="kv"))


def gpt_state():
    return compat.export_official_gpt(tiny_gpt(depth=2))


VIT_KW = dict(variant="KV", image_size=8, patch_size=4, heads=2, dim_head=4)
GPT_KW = dict(variant="QKV", seq_len=4, heads=2, dim_head=4)


def without(state, *keys, **extra):
    return {**{k: v for k, v in state.items() if k not in keys}, **extra}


@pytest.mark.parametrize("call,exc,match", [
    case(lambda: compat.load_official_vit(without(vit_state(), "mlp_head.weight"), **VIT_KW), ValueError,
         r"load_official_vit\(variant='KV'\): the state dict does not match this configuration; "
         r"missing keys: \['mlp_head.weight'\]; unexpected keys: none", "vit-missing-head"),
    case(lambda: compat.load_official_gpt(without(gpt_state(), "output_head.weight"), **GPT_KW), ValueError,
         r"missing keys: \['output_head.weight'\]; unexpected keys: none", "gpt-missing-head"),
    case(lambda: compat.load_official_vit(vit_state(), **{**VIT_KW, "image_size": 12}), ValueError,
         r"translution.layers.0.0.to_k.unique_params must have shape \(28, 8, 8\) for this configuration, "
         r"got \(12, 8, 8\); .*translution.layers.1.0.to_v.unique_params must have shape", "vit-every-shape"),
    case(lambda: compat.load_official_vit([1], **VIT_KW), TypeError,
         r"state_dict must be a mapping of names to tensors", "vit-not-a-mapping"),
    case(lambda: compat.load_official_attention({}, kind="vit", variant="KV", dim=8, heads=2, dim_head=4, size=3),
         TypeError, r"size must be two positive ints \(Hg, Wg\) for kind='vit', got 3", "attention-size-int"),
    case(lambda: compat.export_official_vit(tiny_gpt()), TypeError, "model must be a ViT, got GPT", "export-vit"),
])
def test_compat(call, exc, match):
    check(call, exc, match)


def test_loader_reports_every_problem_in_one_message():
    state = without(vit_state(), "cls_token", "translution.layers.1.1.net.4.bias", extra=torch.zeros(1))
    state["translution.layers.0.1.net.1.weight"] = torch.zeros(8, 9)
    with pytest.raises(ValueError) as err:
        compat.load_official_vit(state, **VIT_KW)
    message = str(err.value)
    assert "missing keys: ['cls_token', 'translution.layers.1.1.net.4.bias']; unexpected keys: ['extra']" in message
    assert "translution.layers.0.1.net.1.weight must have shape (8, 8) for this configuration, got (8, 9)" in message
