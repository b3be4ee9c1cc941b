"""The attentive probe: shapes, initialisation, padding masks and the temporal signal."""

from __future__ import annotations

import pytest
import torch

from probe.training.head import AttentiveProbe


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


def _moving_blob(direction: int, t: int = 4, size: int = 4, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip: every token is `background` except the blob's, which moves one patch a frame along w
    (`direction` +1 or -1, wrapping); the tokens themselves say nothing about where they are."""
    g = torch.Generator().manual_seed(0)
    background, blob = torch.randn(2, d, generator=g)
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(size), torch.arange(size), indexing="ij")
    positions = torch.stack([tt, hh, ww], -1).reshape(-1, 3)
    on = (positions[:, 1] == 1) & (positions[:, 2] == (direction * positions[:, 0]) % size)
    tokens = torch.where(on[:, None], blob, background)
    # The same multiset of tokens for both directions, listed in a content-only order.
    order = torch.argsort(on.float(), stable=True)
    return tokens[order][None], positions[order][None]


def test_rope_pooling_tells_motion_directions_apart() -> None:
    torch.manual_seed(0)
    right, left = _moving_blob(+1), _moving_blob(-1)
    torch.testing.assert_close(right[0], left[0])  # identical tokens: only positions differ
    plain = _probe(64, 4)
    torch.testing.assert_close(plain(*right), plain(*left))
    roped = _probe(64, 4, positions="rope", temporal_slots=4)
    assert not torch.allclose(roped(*right), roped(*left), atol=1e-3)
    perm = torch.randperm(right[0].shape[1])
    torch.testing.assert_close(roped(right[0][:, perm], right[1][:, perm]), roped(*right))


def test_batch_norm_standardises_channels_over_real_tokens_only() -> None:
    torch.manual_seed(0)
    probe = AttentiveProbe(64, 5, norm="batch")
    tokens, positions = _tokens(b=8)
    tokens = 50.0 + 0.1 * tokens  # one large shared direction, small differences (random encoders)
    normed = probe.norm_in(tokens)
    assert normed.mean(dim=(0, 1)).abs().max() < 1e-3
    assert normed.std(dim=(0, 1)).sub(1).abs().max() < 1e-2
    padded = torch.cat([tokens, 1e3 * torch.randn(8, 5, 64)], dim=1)
    mask = torch.arange(padded.shape[1])[None].expand(8, -1) < tokens.shape[1]
    torch.testing.assert_close(probe.norm_in(padded, mask)[:, : tokens.shape[1]], normed)
    # Evaluation uses the running statistics, which the training batches moved towards the data's.
    probe.eval()
    assert probe.norm_in.running_mean.mean().item() == pytest.approx(50.0 * (1 - 0.9**2), rel=0.01)
    torch.testing.assert_close(probe.norm_in(tokens[:1]), probe.norm_in(tokens)[:1])


def test_probe_option_errors() -> None:
    with pytest.raises(ValueError, match="norm 'group' is unknown"):
        AttentiveProbe(64, 5, norm="group")
    with pytest.raises(ValueError, match="needs temporal_slots"):
        AttentiveProbe(64, 5, positions="rope")
    tokens, _ = _tokens()
    with pytest.raises(ValueError, match="needs token positions"):
        AttentiveProbe(64, 5, positions="rope", temporal_slots=4)(tokens)


def _reference_original_head(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """The original suite's pooling head, from its documented equations (not its code):
    q = W_q p + b_q, K = X W_k^T + b_k, V = X W_v^T + b_v (W_q, W_k, W_v stacked in in_proj_weight),
    a = W_o concat_h softmax(q_h K_h^T / sqrt(d_h)) V_h + b_o, y = a + fc2(gelu(fc1(RMSNorm(a)))),
    logits = fc(LayerNorm(y))."""
    b, n, d = x.shape
    dh = d // heads
    w_q, w_k, w_v = state["pool.attention.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = state["pool.attention.in_proj_bias"].chunk(3)
    p = state["pool.probe"].expand(b, 1, d)
    q = (p @ w_q.T + b_q).view(b, 1, heads, dh).transpose(1, 2)
    k = (x @ w_k.T + b_k).view(b, n, heads, dh).transpose(1, 2)
    v = (x @ w_v.T + b_v).view(b, n, heads, dh).transpose(1, 2)
    attn = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, dim=-1) @ v
    a = attn.transpose(1, 2).reshape(b, 1, d) @ state["pool.attention.out_proj.weight"].T
    a = a + state["pool.attention.out_proj.bias"]
    eps = torch.finfo(a.dtype).eps
    rms = a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + eps) * state["pool.norm.weight"]
    hidden = torch.nn.functional.gelu(rms @ state["pool.mlp.fc1.weight"].T + state["pool.mlp.fc1.bias"])
    y = (a + hidden @ state["pool.mlp.fc2.weight"].T + state["pool.mlp.fc2.bias"])[:, 0]
    y = torch.nn.functional.layer_norm(y, (d,), state["norm.weight"], state["norm.bias"])
    return y @ state["fc.weight"].T + state["fc.bias"]


def test_original_head_matches_the_original_pooling_head() -> None:
    from probe.training.train import HeadConfig

    torch.manual_seed(0)
    d, classes = 128, 7
    head = HeadConfig(kind="original").build(d, classes).eval()
    expected = {
        "pool.probe": (1, 1, d),
        "pool.attention.in_proj_weight": (3 * d, d),
        "pool.attention.in_proj_bias": (3 * d,),
        "pool.attention.out_proj.weight": (d, d),
        "pool.attention.out_proj.bias": (d,),
        "pool.norm.weight": (d,),
        "pool.mlp.fc1.weight": (4 * d, d),
        "pool.mlp.fc1.bias": (4 * d,),
        "pool.mlp.fc2.weight": (d, 4 * d),
        "pool.mlp.fc2.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "fc.weight": (classes, d),
        "fc.bias": (classes,),
    }
    state = head.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert head.pool.attention.num_heads == 2  # D // 64
    # initialisation: probe N(0, 1), output projection and MLP trunc-normal 0.02, classifier x 1e-3
    assert 0.8 < state["pool.probe"].std().item() < 1.2
    assert state["pool.mlp.fc1.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert state["pool.attention.out_proj.weight"].std().item() == pytest.approx(0.02, rel=0.1)
    assert 0 < state["fc.weight"].std().item() < 1e-4
    # forward against the hand-written equations, with visible logits
    torch.nn.init.normal_(head.fc.weight)
    torch.nn.init.normal_(head.pool.attention.in_proj_bias)
    tokens = torch.randn(3, 10, d) * 3 + 1
    reference = _reference_original_head(head.state_dict(), tokens, heads=2)
    torch.testing.assert_close(head(tokens), reference, rtol=1e-4, atol=1e-4)
    # padding masked out changes nothing
    padded = torch.cat([tokens, 50 * torch.randn(3, 4, d)], dim=1)
    mask = torch.arange(14)[None].expand(3, -1) < 10
    torch.testing.assert_close(head(padded, None, mask), reference, rtol=1e-4, atol=1e-4)


def test_attentive_head_options_reach_the_original_equations() -> None:
    """With the original's options, our head computes the original's pooling (up to its layout)."""
    torch.manual_seed(0)
    probe = AttentiveProbe(64, 5, norm="none", kv_norm="none", query_residual=False, pool_norm="rms",
                           query_init_std=1.0).eval()
    assert isinstance(probe.pool.norm, torch.nn.RMSNorm) and isinstance(probe.pool.norm_kv, torch.nn.Identity)
    assert probe.pool.query.std().item() > 0.5
    torch.nn.init.normal_(probe.classifier.weight)
    tokens, positions = _tokens()
    pool = probe.pool
    a = pool.attn(pool.query.expand(3, -1, -1), tokens, None)
    y = (a + pool.mlp(pool.norm(a)))[:, 0]
    torch.testing.assert_close(probe(tokens, positions), probe.classifier(probe.norm_out(y)))
    with pytest.raises(ValueError, match="pool_norm"):
        AttentiveProbe(64, 5, pool_norm="batch")
