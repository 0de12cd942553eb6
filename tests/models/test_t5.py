"""T5 encoder: parity with transformers' T5EncoderModel; the `tokenizers` tokenizer against transformers'
tokenizer wrapper and against hand-derived ids; loading Hugging Face directories offline."""

import json

import numpy as np
import pytest
import torch

from v2m.core.errors import BundleError
from v2m.models.t5 import (
    T5Config,
    T5Encoder,
    config_from_hf,
    convert_hf_state_dict,
    make_tokenizer,
    relative_position_buckets,
)
from v2m.runtime.t5_text import T5Tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
from sao_fixtures import REL, rel_err, trained_tokenizer  # noqa: E402


def _hf_t5(ff="relu", seed=0, cls=None):
    # 8 buckets up to distance 20 at S = 30: exact, logarithmic and clipped buckets are all used.
    cfg = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=1,
                                num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                feed_forward_proj=ff, dropout_rate=0.0)
    torch.manual_seed(seed)
    model = (cls or transformers.T5EncoderModel)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.normal_()  # the bias matters at O(1)
            else:
                p.normal_(0, 0.3)
    return model


def _ours(hf) -> T5Encoder:
    cfg = config_from_hf(hf.config.to_dict())
    ours = T5Encoder(cfg)
    ours.load_state_dict(convert_hf_state_dict(hf.state_dict(), cfg), strict=True)
    return ours.eval()


def _ids(b=3, s=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 9:], mask[2, 1:] = 0, 0  # a padded prompt and a one-token one
    return ids * mask, mask


@pytest.mark.parametrize("ff", ["relu", "gated-gelu"])
@torch.no_grad()
def test_parity_with_transformers(ff):
    hf = _hf_t5(ff)
    ours = _ours(hf)
    assert ours.cfg.act == ("relu" if ff == "relu" else "gelu_new")
    ids, mask = _ids()
    ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state * mask[:, :, None]
    out = ours(ids, mask)
    assert out.shape == (3, 30, 32)
    assert rel_err(out, ref) <= REL, rel_err(out, ref)
    assert torch.equal(out[1, 9:], torch.zeros(21, 32))


def test_relative_buckets_against_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(40)[None, :] - torch.arange(40)[:, None]
    for buckets, dist in ((32, 128), (8, 20)):
        want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets, max_distance=dist)
        assert torch.equal(relative_position_buckets(40, buckets, dist, "cpu"), want)


@torch.no_grad()
def test_from_pretrained_directories(tmp_path):
    hf = _hf_t5(seed=2)
    hf.save_pretrained(tmp_path / "enc")
    ids, mask = _ids(seed=4)
    ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state * mask[:, :, None]
    assert rel_err(T5Encoder.from_pretrained(tmp_path / "enc")(ids, mask), ref) <= REL
    # A whole encoder-decoder checkpoint (as Hugging Face publishes t5-base): the decoder is ignored.
    full = _hf_t5(seed=2, cls=transformers.T5ForConditionalGeneration)
    full.save_pretrained(tmp_path / "full")
    ref = full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask[:, :, None]
    assert rel_err(T5Encoder.from_pretrained(tmp_path / "full")(ids, mask), ref) <= REL
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "enc" / "config.json").read_text())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BundleError, match="no safetensors"):
        T5Encoder.from_pretrained(tmp_path / "bin")
    with pytest.raises(BundleError, match="not T5"):
        config_from_hf({"model_type": "bert"})
    with pytest.raises(BundleError, match="not supported"):
        T5Config(feed_forward_proj="gated-mish")


# --- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_matches_transformers_padding_and_truncation(tmp_path):
    path = trained_tokenizer(tmp_path / "tokenizer.json")
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=path, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    prompts = ["warm synth pop", "", "an epic orchestral trailer at 120 bpm with a driving bassline and rain " * 3]
    for max_tokens in (8, 24):
        ours = T5Tokenizer(path, max_tokens)
        ids, mask = ours(prompts)
        want = ref(prompts, padding="max_length", max_length=max_tokens, truncation=True)
        assert ids.tolist() == want["input_ids"] and mask.tolist() == want["attention_mask"]
        assert ids.shape == (3, max_tokens) and ids.dtype == np.int64
        assert ids[2, -1] == ours.tokenizer.token_to_id("</s>")  # a cut prompt keeps its end token


def test_generated_tokenizer_ids(tmp_path):
    """make_tokenizer's ids, derived by hand: <pad> 0, </s> 1, <unk> 2, then "▁" + each word."""
    words = ["warm", "synth", "pop"]
    tok = T5Tokenizer(make_tokenizer(tmp_path / "t.json", vocab_size=100, words=words), max_tokens=6)
    ids, mask = tok(["Warm synth!", "pop"])
    assert ids[0].tolist()[:2] == [3, 4] and ids[0, -1] == 0 and mask[0].sum() >= 3
    assert ids[1].tolist() == [5, 1, 0, 0, 0, 0] and mask[1].tolist() == [1, 1, 0, 0, 0, 0]
    with pytest.raises(BundleError, match="do not fit"):
        make_tokenizer(tmp_path / "u.json", vocab_size=10)
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(BundleError, match="not a readable tokenizer"):
        T5Tokenizer(tmp_path / "bad.json", 8)
