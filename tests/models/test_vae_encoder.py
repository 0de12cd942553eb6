"""Oobleck VAE encoder: parity with diffusers' AutoencoderOobleck.encode, the stable-audio-tools layout."""

import pytest
import torch
from oobleck_ref import diffusers_vae  # noqa: E402

from v2m.core.errors import BundleError
from v2m.models.vae_encoder import (
    OobleckEncoder,
    convert_diffusers_encoder,
    convert_stable_audio_encoder,
    infer_encoder_config,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")

# encoder_hidden_size = 2 * latent channels, as diffusers' posterior split needs; odd strides included.
CONFIGS = [
    dict(encoder_hidden_size=6, channel_multiples=[1, 2, 3], downsampling_ratios=[2, 3, 2], decoder_channels=4,
         decoder_input_channels=3),
    dict(encoder_hidden_size=4, channel_multiples=[1, 2, 2, 3, 4], downsampling_ratios=[2, 4, 7, 8, 8],
         decoder_channels=4, decoder_input_channels=2),
]


def _ours(sd, config) -> OobleckEncoder:
    native = convert_diffusers_encoder(sd)
    model = OobleckEncoder(infer_encoder_config(native))
    model.load_state_dict(native, strict=True)
    return model.eval()


@pytest.mark.parametrize("config", CONFIGS)
def test_parity_with_diffusers_encode(config):
    vae = diffusers_vae(config)
    hop = 1
    for s in config["downsampling_ratios"]:
        hop *= s
    audio = 0.3 * torch.randn(2, 2, 5 * hop + 37, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = vae.encode(audio).latent_dist.mean
        ours = _ours(vae.state_dict(), config).encode(audio)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def _to_stable_audio(vae) -> dict[str, torch.Tensor]:
    """diffusers' encoder keys renamed into stable-audio-tools' Sequential layout (written from that
    module's definition, independently of the converter), under a whole model's pretransform prefix."""
    n = len(vae.config.downsampling_ratios)
    block = {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4}
    res = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
    out = {}
    for k, v in vae.state_dict().items():
        if not k.startswith("encoder."):
            continue
        p = k.split(".")[1:]
        if p[0] == "conv1":
            name = ["layers", "0", *p[1:]]
        elif p[0] == "snake1":
            name = ["layers", str(n + 1), *p[1:]]
            v = v.reshape(-1)
        elif p[0] == "conv2":
            name = ["layers", str(n + 2), *p[1:]]
        else:  # block.i.sub...
            name = ["layers", str(int(p[1]) + 1), "layers", str(block[p[2]])]
            if p[2].startswith("res_unit"):
                name += ["layers", str(res[p[3]]), *p[4:]]
            else:
                name += p[3:]
            if name[-1] in ("alpha", "beta"):
                v = v.reshape(-1)
        out["pretransform.model.encoder." + ".".join(name)] = v
    out["pretransform.model.decoder.layers.0.bias"] = torch.zeros(3)  # ignored
    return out


def test_stable_audio_layout_and_scale():
    config = CONFIGS[0]
    vae = diffusers_vae(config, seed=5)
    sd = _to_stable_audio(vae)
    audio = 0.3 * torch.randn(1, 2, 24 * 4, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = vae.encode(audio).latent_dist.mean
        native = convert_stable_audio_encoder(sd, scale=2.0)
        model = OobleckEncoder(infer_encoder_config(native))
        model.load_state_dict(native, strict=True)
        got = model.eval().encode(audio)
    torch.testing.assert_close(got, ref / 2.0, atol=1e-5, rtol=1e-5)  # stable-audio-tools encodes to latents / scale
    with pytest.raises(BundleError, match="encoder"):
        convert_stable_audio_encoder({"decoder.layers.0.weight": torch.zeros(1)})
