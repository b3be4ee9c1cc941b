"""The grid as one stacked module (`probe.training.grid`) computes what the probes compute one by one."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from test_train import FAST, FRAMES, temporal_order_features

from probe.training.grid import StackedProbes
from probe.training.train import HeadConfig, train_probe_grid

REFERENCE = HeadConfig(temporal_pos="sinusoidal")  # the reference head of an image backbone


def _perturbed_heads(config: HeadConfig, num: int, dim: int, classes: int) -> list[torch.nn.Module]:
    """Probes of one architecture with different weights (a trained grid's probes differ)."""
    heads = []
    for k in range(num):
        torch.manual_seed(k)
        head = config.build(dim, classes).double()
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p) * 0.3)
        heads.append(head)
    return heads


@pytest.mark.parametrize(
    ("norm", "kv_norm", "temporal_pos", "pool_norm", "query_residual"),
    list(itertools.product(["layer", "none"], ["layer", "none"], ["none", "sinusoidal"], ["layer"], [True]))
    + [("layer", "layer", "none", "rms", False)],
)
def test_stacked_forward_and_gradients_equal_each_probe(
    norm: str, kv_norm: str, temporal_pos: str, pool_norm: str, query_residual: bool
) -> None:
    config = HeadConfig(
        norm=norm,
        kv_norm=kv_norm,
        temporal_pos=temporal_pos,
        pool_norm=pool_norm,
        query_residual=query_residual,
    )
    heads = _perturbed_heads(config, 3, 64, 5)
    torch.manual_seed(9)
    tokens = (torch.randn(4, 20, 64) * 2 + 1).double()
    positions = torch.randint(0, 16, (4, 20, 3))
    mask = torch.rand(4, 20) > 0.2  # padding in every clip
    stacked = StackedProbes(heads)

    ref = torch.stack([h(tokens, positions, mask) for h in heads])
    out = stacked(tokens, positions, mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)

    ref_grads = torch.autograd.grad(ref.square().sum(), [p for h in heads for p in h.parameters()])
    out_grads = torch.autograd.grad(out.square().sum(), list(stacked.stacked), allow_unused=True)
    for i, name in enumerate(stacked.names):
        want = torch.stack(ref_grads[i :: len(stacked.names)])
        got = out_grads[i] if out_grads[i] is not None else torch.zeros_like(want)
        if name == "pool.attn.kv.bias":  # the key bias shifts every logit alike: no gradient, exactly
            assert not got[:, :64].any()
            want, got = want[:, 64:], got[:, 64:]
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=name)
    for p in range(3):  # each probe comes back out as a plain AttentiveProbe
        plain = config.build(64, 5).double()
        plain.load_state_dict(stacked.probe_state(p))
        torch.testing.assert_close(plain(tokens, positions, mask), ref[p].detach())


def test_stacked_batch_standardisation_is_shared_and_matches() -> None:
    """norm=batch: one set of running statistics for the grid, equal to each probe's own."""
    config = HeadConfig(norm="batch")
    heads = [config.build(32, 4) for _ in range(2)]
    loop = [config.build(32, 4) for _ in range(2)]
    for h, twin in zip(heads, loop, strict=True):
        twin.load_state_dict(h.state_dict())
    stacked = StackedProbes(heads)
    tokens = torch.randn(6, 10, 32) * 5 + 100
    for _ in range(3):
        torch.testing.assert_close(
            stacked(tokens), torch.stack([h(tokens) for h in loop]), rtol=1e-4, atol=1e-5
        )
    stacked.eval()
    for h in loop:
        h.eval()
    torch.testing.assert_close(stacked(tokens), torch.stack([h(tokens) for h in loop]), rtol=1e-4, atol=1e-5)
    assert torch.equal(stacked.probe_state(1)["norm_in.running_mean"], loop[1].norm_in.running_mean)


def test_stacked_training_matches_the_loop_and_learns() -> None:
    train = temporal_order_features(480, views=2, seed=1)
    test = temporal_order_features(160, views=2, seed=2)
    # Learning rates where training is not chaotic: float rounding (the two trainers sum in different
    # orders) stays at rounding size. At 1e-2 the two trajectories part after a few epochs, as two runs
    # on different hardware would, and end at the same accuracy on average over seeds.
    recipe = replace(FAST, lrs=(1e-3, 3e-3), epochs=4)
    stacked = train_probe_grid(train, test, FRAMES, REFERENCE, recipe, progress=False)
    loop = train_probe_grid(train, test, FRAMES, REFERENCE, replace(recipe, grid="loop"), progress=False)
    assert (stacked.trainer, loop.trainer) == ("stacked", "loop")
    for name, curve in loop.curves.items():
        for a, b in zip(stacked.curves[name], curve, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
            assert a.val_loss == pytest.approx(b.val_loss, rel=1e-3)
            assert a.lr == pytest.approx(b.lr, rel=1e-9)
    assert (stacked.selected.probe, stacked.selected.epoch) == (loop.selected.probe, loop.selected.epoch)
    torch.testing.assert_close(stacked.test_view_logits, loop.test_view_logits, rtol=1e-3, atol=1e-4)

    learned = train_probe_grid(train, test, FRAMES, REFERENCE, FAST, progress=False)
    assert learned.trainer == "stacked" and learned.test.top1 > 70.0  # chance is 25


def test_stacked_is_refused_for_heads_it_cannot_stack() -> None:
    train = temporal_order_features(40, views=1, seed=1)
    rope = HeadConfig(positions="rope", temporal_slots=FRAMES)
    with pytest.raises(ValueError, match="grid=stacked cannot train this head .*rope"):
        train_probe_grid(train, train, FRAMES, rope, replace(FAST, epochs=1, grid="stacked"), progress=False)
    auto = train_probe_grid(train, train, FRAMES, rope, replace(FAST, epochs=1), progress=False)
    assert auto.trainer == "loop"
