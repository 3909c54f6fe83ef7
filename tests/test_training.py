"""Training behaviour: optimizer steps, DistributedDataParallel with gloo."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from translution_ext.models import GPT, ViT


VOCAB, SEQ, LAG = 8, 10, 2


def tiny_gpt(mixer="translution", relative="qkv"):
    return GPT(vocab_size=VOCAB, seq_len=SEQ, dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, mixer=mixer,
               relative=relative, dim_relenc=4)


def lookup_accuracy(model, steps=60):
    """Trains on random tokens to predict, at every position t >= LAG, the token at t − LAG; returns the
    held-out accuracy.  The answer is independent of the token at t, so the embeddings and MLP alone stay
    at chance (1 / VOCAB): only the token mixer, through its relative offsets, can fetch it."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (32, SEQ), generator=g)
        loss = torch.nn.functional.cross_entropy(model(tokens)[:, LAG:].flatten(0, 1), tokens[:, :-LAG].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens = torch.randint(0, VOCAB, (256, SEQ), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (model(tokens)[:, LAG:].argmax(-1) == tokens[:, :-LAG]).float().mean().item()


@pytest.mark.parametrize("mixer,relative", [("translution", "qkv"), ("translution", "kv"), ("alpha", "qkv")])
def test_attention_learns_a_lookup_at_a_relative_offset(mixer, relative):
    torch.manual_seed(0)
    assert lookup_accuracy(tiny_gpt(mixer, relative)) > 0.9


@pytest.mark.parametrize("mixer", ["translution", "alpha"])
def test_the_lookup_is_not_learned_without_the_attention_output(mixer):
    # The same training with every token mixer's output multiplied by 0: the task needs attention.
    torch.manual_seed(0)
    model = tiny_gpt(mixer)
    for block in model.blocks:
        block.mixer.register_forward_hook(lambda module, inputs, out: out * 0)
    assert lookup_accuracy(model) < 2 / VOCAB


def tiny_vit():
    return ViT(image_size=8, patch_size=4, num_classes=3, dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32,
               tln_num=1, relative="qkv")


def _ddp_worker(rank: int, world: int, out_dir: str) -> None:
    # A file rendezvous: no TCP port to pick or race for.
    store = os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(tiny_vit())
    torch.manual_seed(1)
    img, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    shard = slice(rank * 2, rank * 2 + 2)
    loss = torch.nn.functional.cross_entropy(model(img[shard]), labels[shard])
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.module.named_parameters()}, os.path.join(out_dir, "ddp.pt"))
    # Both ranks leave together: a rank tearing gloo down while the other still
    # uses it aborts the process.
    dist.barrier()
    dist.destroy_process_group()
    # Skip interpreter teardown: a communication thread still joinable at static
    # destruction aborts the process ("terminate called without an active exception").
    os._exit(0)


def test_ddp_gloo_two_processes_match_one(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ddp_grads = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.manual_seed(0)
    model = tiny_vit()
    torch.manual_seed(1)
    img, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    torch.nn.functional.cross_entropy(model(img), labels).backward()
    assert set(ddp_grads) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
