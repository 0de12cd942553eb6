"""DiT: shapes, conditioning paths, masking, and the hoisted (cached) decomposition."""

import pytest
import torch

from v2m.core.errors import BundleError
from v2m.models.dit import PRESETS, DiT, DiTConfig

CFG = DiTConfig(latent_channels=6, width=32, depth=2, heads=4, mlp_dim=48, text_dim=12, freq_dim=16)


def _model(zero_init=False):
    return DiT(CFG).init_weights(torch.Generator().manual_seed(0), zero_init=zero_init).eval()


def _inputs(b=2, n=11, s=5):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(b, s)
    mask[:, 3:] = 0
    return (
        torch.randn(b, 6, n, generator=g),
        torch.randn(b, 1, n, generator=g),
        torch.rand(b, generator=g),
        torch.randn(b, s, 12, generator=g),
        mask,
    )


@torch.no_grad()
def test_shapes_and_odd_lengths():
    m = _model()
    for n in (1, 11, 64):
        x, c, t, txt, mk = _inputs(n=n)
        assert m(x, c, t, txt, mk).shape == (2, 6, n)


@torch.no_grad()
def test_curve_channel_is_d_extra_weights_and_matters():
    m = _model()
    assert m.in_proj.weight.shape == (CFG.width, CFG.latent_channels + 1)
    x, c, t, txt, mk = _inputs()
    assert not torch.allclose(m(x, c, t, txt, mk), m(x, c * 0, t, txt, mk))


@torch.no_grad()
def test_masked_text_positions_are_ignored():
    m = _model()
    x, c, t, txt, mk = _inputs()
    txt2 = txt.clone()
    txt2[:, 3:] = 100.0  # only masked positions change
    torch.testing.assert_close(m(x, c, t, txt, mk), m(x, c, t, txt2, mk), atol=1e-5, rtol=1e-5)
    txt3 = txt.clone()
    txt3[:, 0] += 1.0
    assert not torch.allclose(m(x, c, t, txt, mk), m(x, c, t, txt3, mk))


@torch.no_grad()
def test_batch_rows_are_independent():
    m = _model()
    x, c, t, txt, mk = _inputs()
    full = m(x, c, t, txt, mk)
    one = m(x[1:], c[1:], t[1:], txt[1:], mk[1:])
    torch.testing.assert_close(full[1:], one, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_hoisted_pieces_equal_forward():
    m = _model()
    x, c, t, txt, mk = _inputs()
    mods, final = m.time_modulations(t)
    kvs, bias = m.text_context(txt, mk)
    torch.testing.assert_close(m.backbone(x, c, mods, final, kvs, bias), m(x, c, t, txt, mk))


@torch.no_grad()
def test_adaln_zero_init_outputs_zero():
    m = _model(zero_init=True)
    assert torch.count_nonzero(m(*_inputs())) == 0


def test_config_roundtrip_and_errors():
    assert DiTConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(BundleError, match="unknown keys"):
        DiTConfig.from_dict({**CFG.to_dict(), "bogus": 1})
    with pytest.raises(BundleError):
        DiTConfig(width=30, heads=4)


def test_full_preset_matches_the_paper():
    f = PRESETS["full"]
    assert (f.depth, f.width, f.heads, f.mlp_dim, f.latent_channels, f.text_dim) == (16, 2048, 16, 8192, 64, 2560)
    # ~1.5 TFLOP per CFG step (B = 2) at L = 394, as the performance goals assume
    assert 1.2e12 < f.flops(2, 394, 128) < 1.8e12
