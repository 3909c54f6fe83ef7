"""Weights in the reference code's format: loading, exporting, whole models."""
from __future__ import annotations

import pytest
import torch

from translution_ext import compat
from translution_ext.models import GPT, ViT, create_gpt, create_vit

import translution_reference as spec

VARIANTS = ["QKV", "QK", "QV", "KV", "Q", "K", "V"]
ALL_VARIANTS = VARIANTS + [f"alpha_{v}" for v in VARIANTS]
DIM, HEADS, DIM_HEAD, DIM_RELENC = 12, 2, 4, 3


@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("kind,size,n", [("vit", (2, 3), 7), ("gpt", 6, 6)])
def test_load_official_attention_computes_the_reference(kind, size, n, variant):
    sd = spec.random_official_state(kind=kind, variant=variant, dim=DIM, heads=HEADS, dim_head=DIM_HEAD,
                                    size=size, dim_relenc=DIM_RELENC)
    block = compat.load_official_attention(sd, kind=kind, variant=variant, dim=DIM, heads=HEADS,
                                           dim_head=DIM_HEAD, size=size, dim_relenc=DIM_RELENC)
    assert not block.training
    x = torch.randn(3, n, DIM)
    layout = "2d_cls" if kind == "vit" else "causal"
    expected = spec.reference_forward(sd, x, alpha=variant.startswith("alpha_"), layout=layout, size=size,
                                      heads=HEADS, dim_head=DIM_HEAD, relative=variant.lower().removeprefix("alpha_"))
    torch.testing.assert_close(block(x), expected, atol=2e-5, rtol=2e-5)
    # The reverse export gives back exactly the reference state dict, buffers included.
    exported = compat.export_official_attention(block)
    assert list(sorted(exported)) == list(sorted(sd))
    for key, value in sd.items():
        assert torch.equal(exported[key], value), key


def test_load_official_attention_errors_name_the_keys():
    sd = spec.random_official_state(kind="vit", variant="KV", dim=DIM, heads=HEADS, dim_head=DIM_HEAD, size=(2, 2))
    kw = dict(kind="vit", dim=DIM, heads=HEADS, dim_head=DIM_HEAD, size=(2, 2))
    with pytest.raises(ValueError, match=r"missing keys: \['to_k.weight', 'to_q.unique_params'\]; "
                       r"unexpected keys: \['to_k.unique_params', 'to_q.weight'\]"):
        compat.load_official_attention(sd, variant="QV", **kw)
    with pytest.raises(ValueError, match=r"to_k.unique_params must have shape \(28, 12, 8\)"):
        compat.load_official_attention(sd, variant="KV", **{**kw, "size": (3, 3)})
    with pytest.raises(ValueError, match="variant must be one of QKV, QK"):
        compat.load_official_attention(sd, variant="XY", **kw)
    with pytest.raises(ValueError, match="kind must be 'vit' or 'gpt'"):
        compat.load_official_attention(sd, variant="KV", **{**kw, "kind": "bert"})


def small_vit(**kw):
    return ViT(image_size=12, patch_size=4, num_classes=5, dim=DIM, depth=3, heads=HEADS, dim_head=DIM_HEAD,
               mlp_dim=20, dim_relenc=DIM_RELENC, **kw)


def randomize_(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("variant,tln_num,hybrid,pool,pos", [
    ("QKV", None, "rope2d", "cls", False),
    ("KV", 2, "rope2d", "mean", True),
    ("alpha_QV", 1, "plain", "cls", False),
    ("alpha_V", None, "rope2d", "cls", False),
])
def test_vit_matches_reference_and_round_trips(variant, tln_num, hybrid, pool, pos):
    torch.manual_seed(0)
    alpha = variant.startswith("alpha_")
    model = small_vit(mixer="alpha" if alpha else "translution", relative=variant.lower().removeprefix("alpha_"),
                      tln_num=tln_num, hybrid_attention=hybrid, pool=pool, pos_embedding=pos).eval()
    randomize_(model)
    sd = compat.export_official_vit(model)
    for img in (torch.randn(2, 3, 12, 12), torch.randn(2, 3, 8, 12)):  # the full image and a smaller one
        expected = spec.vit(sd, img, variant=variant, patch=4, grid=(3, 3), heads=HEADS, dim_head=DIM_HEAD, pool=pool)
        torch.testing.assert_close(model(img), expected, atol=2e-5, rtol=2e-5)
    loaded = compat.load_official_vit(sd, variant=variant, image_size=12, patch_size=4, heads=HEADS,
                                      dim_head=DIM_HEAD, dim_relenc=DIM_RELENC, pool=pool)
    assert loaded.tln_num == model.tln_num
    img = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(loaded(img), model(img), rtol=0, atol=0)
    again = compat.export_official_vit(loaded)
    assert sorted(again) == sorted(sd) and all(torch.equal(again[k], sd[k]) for k in sd)


@pytest.mark.parametrize("variant", ["QKV", "Q", "alpha_KV", "alpha_K"])
def test_gpt_matches_reference_and_round_trips(variant):
    torch.manual_seed(0)
    alpha = variant.startswith("alpha_")
    model = GPT(vocab_size=11, seq_len=8, dim=DIM, depth=2, heads=HEADS, dim_head=DIM_HEAD, mlp_dim=20,
                mixer="alpha" if alpha else "translution", relative=variant.lower().removeprefix("alpha_"),
                dim_relenc=DIM_RELENC).eval()
    randomize_(model)
    sd = compat.export_official_gpt(model)
    tokens = torch.randint(0, 11, (2, 8))
    expected = spec.gpt(sd, tokens, variant=variant, seq_len=8, heads=HEADS, dim_head=DIM_HEAD)
    torch.testing.assert_close(model(tokens), expected, atol=2e-5, rtol=2e-5)
    # Causal: a prefix gives the prefix's logits.
    torch.testing.assert_close(model(tokens[:, :5]), model(tokens)[:, :5], atol=2e-5, rtol=2e-5)
    loaded = compat.load_official_gpt(sd, variant=variant, seq_len=8, heads=HEADS, dim_head=DIM_HEAD,
                                      dim_relenc=DIM_RELENC)
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
    again = compat.export_official_gpt(loaded)
    assert sorted(again) == sorted(sd) and all(torch.equal(again[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name,dim,depth,heads", [("tiny", 192, 6, 3), ("mini", 192, 12, 3), ("small", 384, 12, 6),
                                                  ("base", 768, 12, 12), ("large", 1024, 24, 16)])
def test_named_configs(name, dim, depth, heads):
    from translution_ext.models import config
    assert config(name) == dict(dim=dim, depth=depth, heads=heads, mlp_dim=4 * dim)


def test_create_models_and_errors():
    vit = create_vit("tiny", image_size=32, patch_size=16, num_classes=3, depth=1, tln_num=1)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert vit.blocks[0].mixer.q_table.shape == (3 * 3 + 3, 192, 192)
    gpt = create_gpt("tiny", vocab_size=7, seq_len=4, depth=2, tln_num=1, mixer="alpha")
    assert gpt(torch.randint(0, 7, (2, 3))).shape == (2, 3, 7)
    with pytest.raises(ValueError, match="tokens.size\\(1\\) must be <= seq_len = 4"):
        gpt(torch.randint(0, 7, (1, 5)))
    with pytest.raises(ValueError, match="img height and width must be multiples of the patch size"):
        vit(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"tln_num must be an int in \[0, depth=1\]"):
        create_vit("tiny", depth=1, tln_num=2)
    with pytest.raises(ValueError, match="mixer must be one of"):
        create_gpt("tiny", vocab_size=7, seq_len=4, mixer="conv")
    with pytest.raises(ValueError, match="config must be one of"):
        create_vit("huge")
