"""The one-pass SnakeBeta kernel against `snake_reference` (the VAE module's formula in fp32)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from v2m.kernels import snake  # noqa: E402

TOL = {torch.float32: (2e-6, 2e-6), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
# (B, C, T): a single sample, odd channel counts, T across a block boundary (4096) and not a power of two
SHAPES = [(1, 1, 1), (2, 7, 781), (1, 3, 4097), (3, 5, 1823)]


def _params(c, g):
    return (torch.randn(1, c, 1, generator=g) * 0.5, torch.randn(1, c, 1, generator=g) * 0.5)


@pytest.mark.parametrize("dtype", list(TOL), ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(device, assert_close, shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 3).to(dtype).to(device)
    a, b = (p.to(device) for p in _params(shape[1], g))
    y = snake.snake(x, *snake.snake_params(a, b))
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, snake.snake_reference(x, a, b), *TOL[dtype], "snake")


def test_reference_is_the_module(device, assert_close):
    from v2m.models.vae import Snake1d

    g = torch.Generator().manual_seed(0)
    m = Snake1d(6).to(device)
    with torch.no_grad():
        m.alpha.copy_(_params(6, g)[0])
        m.beta.copy_(_params(6, g)[1])
    x = torch.randn(2, 6, 300, generator=g).to(device)
    with torch.no_grad():
        assert_close(snake.snake(x, *snake.snake_params(m.alpha, m.beta)), m(x), 2e-6, 2e-6, "module")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # the interpreter casts the >fp16-max reference too
def test_fp16_small_beta_stays_finite(device):
    """exp(beta) below fp16's smallest normal: the module in fp16 overflows, the kernel does not."""
    x = torch.linspace(-2, 2, 64).reshape(1, 1, 64).to(device)
    a = torch.zeros(1, 1, 1, device=device)
    b = torch.full((1, 1, 1), -12.0, device=device)  # 1 / exp(-12) = 1.6e5 > fp16 max
    y = snake.snake(x.half(), *snake.snake_params(a.half(), b.half()))
    ref = snake.snake_reference(x, a, b)
    finite = ref.abs() < 60000
    assert torch.isfinite(y[finite]).all()
    torch.testing.assert_close(y[finite].float(), ref[finite], atol=0, rtol=2e-3)


def test_strided_input(device, assert_close):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 100, generator=g).to(device)[:, :, ::2]
    a, b = (p.to(device) for p in _params(4, g))
    assert_close(snake.snake(x, *snake.snake_params(a, b)), snake.snake_reference(x, a, b), *TOL[torch.float32], "strided")


def test_bad_params(device):
    x = torch.zeros(1, 3, 5, device=device)
    with pytest.raises(ValueError, match="snake_params"):
        snake.snake(x, torch.ones(3, device=device), torch.ones(2, device=device))
    with pytest.raises(ValueError, match="snake_params"):
        snake.snake(x, torch.ones(1, 3, 1, device=device), torch.ones(1, 3, 1, device=device))


def test_vae_with_triton_snake_matches(device, assert_close, tiny_bundle):
    """The whole tiny decoder with every Snake swapped (`use_triton_snake`) decodes like the original."""
    import copy

    from v2m.models.bundle import bundle_config, load_component
    from v2m.runtime.backends.torch_fused import TritonSnake1d, use_triton_snake

    vae = load_component(tiny_bundle, "vae", bundle_config("tiny")).to(device)
    fused = copy.deepcopy(vae)
    n = use_triton_snake(fused)
    assert n > 0 and sum(isinstance(m, TritonSnake1d) for m in fused.modules()) == n
    assert fused.state_dict().keys() == vae.state_dict().keys()
    z = torch.randn(1, vae.cfg.latent_channels, 9, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        got, ref = fused(z), vae(z)
    # ~20 layers of a random decoder (its gain calibrated after the fact) amplify the kernel's
    # one-ulp differences from the module's op order: compare as a signal-to-error ratio.
    snr_db = 10 * torch.log10(ref.pow(2).sum() / (got - ref).pow(2).sum().clamp_min(1e-30)).item()
    assert snr_db > 70, snr_db
