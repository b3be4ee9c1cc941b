"""The attentive probe: shapes, initialisation, padding masks and the temporal signal."""

from __future__ import annotations

import pytest
import torch

from probe.head import AttentiveProbe


def _tokens(b: int = 3, t: int = 4, per_frame: int = 3, d: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, t * per_frame, d, generator=g)
    positions = torch.stack(
        [
            torch.arange(t).repeat_interleave(per_frame),
            torch.zeros(t * per_frame, dtype=torch.long),
            torch.arange(per_frame).repeat(t),
        ],
        dim=-1,
    ).expand(b, -1, -1)
    return tokens, positions


def _probe(*args, **kwargs) -> AttentiveProbe:
    """An eval-mode probe whose classifier has unit-scale weights, so logits differ visibly."""
    probe = AttentiveProbe(*args, **kwargs).eval()
    torch.nn.init.normal_(probe.classifier.weight)
    return probe


def test_default_heads_and_classifier_init() -> None:
    torch.manual_seed(0)
    probe = AttentiveProbe(embed_dim=256, num_classes=10)
    assert probe.pool.attn.num_heads == 4  # D // 64
    assert AttentiveProbe(embed_dim=32, num_classes=2).pool.attn.num_heads == 1
    w = probe.classifier.weight
    assert 0 < w.std().item() < 1e-4  # 0.02 truncated normal scaled by 1e-3
    assert probe.pool.mlp[0].out_features == 4 * 256
    assert probe.pool.attn.q.weight.std().item() == pytest.approx(0.02, rel=0.1)
    tokens, positions = _tokens(d=256)
    logits = probe(tokens, positions)
    assert logits.shape == (3, 10)
    assert logits.abs().max().item() < 1e-2  # near-uniform predictions at start


@pytest.mark.parametrize("depth", [0, 2])
def test_padding_is_ignored_when_masked(depth: int) -> None:
    torch.manual_seed(0)
    probe = _probe(64, 5, depth=depth, temporal_pos="sinusoidal")
    tokens, positions = _tokens()
    padded = torch.cat([tokens, 100 * torch.randn(3, 5, 64)], dim=1)
    padded_pos = torch.cat([positions, torch.full((3, 5, 3), 7)], dim=1)
    mask = torch.arange(padded.shape[1])[None].expand(3, -1) < tokens.shape[1]
    expected = probe(tokens, positions)
    torch.testing.assert_close(probe(padded, padded_pos, mask), expected)
    assert not torch.allclose(probe(padded, padded_pos), expected, atol=1e-2)  # the mask is what matters


def test_without_temporal_embedding_the_probe_is_a_set_function() -> None:
    torch.manual_seed(0)
    tokens, positions = _tokens()
    perm = torch.randperm(tokens.shape[1])
    plain = _probe(64, 5, depth=1)
    torch.testing.assert_close(plain(tokens[:, perm], positions[:, perm]), plain(tokens, positions))
    for kind in ("sinusoidal", "learned"):
        timed = _probe(64, 5, temporal_pos=kind, temporal_slots=8)
        # Same token order, shifted frame indices: the output must change.
        shifted = positions.clone()
        shifted[..., 0] += 3
        assert not torch.allclose(timed(tokens, shifted), timed(tokens, positions), atol=1e-2)
        # Permuting tokens together with their positions changes nothing.
        torch.testing.assert_close(timed(tokens[:, perm], positions[:, perm]), timed(tokens, positions))


def test_temporal_configuration_errors() -> None:
    with pytest.raises(ValueError, match="temporal_slots"):
        AttentiveProbe(64, 5, temporal_pos="learned")
    with pytest.raises(ValueError, match="unknown"):
        AttentiveProbe(64, 5, temporal_pos="rope")
    probe = AttentiveProbe(64, 5, temporal_pos="learned", temporal_slots=2)
    tokens, positions = _tokens(t=4)
    with pytest.raises(ValueError, match="outside the learned temporal table of 2 slots"):
        probe(tokens, positions)
    with pytest.raises(ValueError, match="needs token positions"):
        probe(tokens)
