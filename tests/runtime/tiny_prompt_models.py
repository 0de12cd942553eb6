"""Tiny random Hugging Face models for the prompt stages' tests, made from transformers configs
and saved with save_pretrained to local folders (no download): a Whisper, a ViT + GPT-2
VisionEncoderDecoder captioner and a GPT-2 LM, each with a word-level tokenizer built offline
with the `tokenizers` library."""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

SPOKEN = ["<eot>", "<sot>", "hello", "world", "music", "rain", "city", "night", "drums", "voice", "happy", "storm",
          "quiet", "road", "river", "song", "dance", "fire", "light", "sea", "wind", "train", "bird", "clock"]
SEEN = ["[UNK]", "[EOS]", "[BOS]", "a", "dog", "red", "car", "beach", "sky", "blue", "on", "the", "green", "field",
        "tree", "house", "cat", "boat", "road", "man", "woman", "ball", "city", "night"]
WORDS = ["[UNK]", "[EOS]", "slow", "fast", "groove", "bpm", "warm", "pad", "music", "video", "the", "a", ",", "."]
WORDS += [w for w in SPOKEN + SEEN if w not in WORDS and not w.startswith(("<", "["))]  # the LM reads both


def word_tokenizer(words, unk: str, eos: str, bos: str | None = None):
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"bos_token": bos} if bos else {}
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=unk, eos_token=eos, pad_token=eos,
                                                **extra)


def tiny_whisper(path, seed: int = 0):
    """A 1-layer Whisper (d_model 16) over SPOKEN, with its feature extractor and tokenizer."""
    cfg = transformers.WhisperConfig(
        vocab_size=len(SPOKEN), num_mel_bins=80, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500,  # 30 s of features (3000 frames) after the stride-2 convolution
        max_target_positions=24, decoder_start_token_id=1, bos_token_id=1, eos_token_id=0, pad_token_id=0,
        begin_suppress_tokens=None, suppress_tokens=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg)
    with torch.no_grad():  # an untied, larger output layer: a random model whose answer depends on the audio
        model.proj_out.weight.normal_(0.0, 3.0)
        model.proj_out.weight[:2].fill_(-1.0)  # <eot> and <sot> lose: the answer runs to max_new_tokens
        cross = model.model.decoder.layers[0].encoder_attn
        for lin in (cross.q_proj, cross.k_proj, cross.v_proj, cross.out_proj):  # what is heard outweighs what was said
            lin.weight.normal_(0.0, 1.0)
        for conv in (model.model.encoder.conv1, model.model.encoder.conv2):  # the sound outweighs the positions
            conv.weight.normal_(0.0, 0.3)
    model.save_pretrained(path)
    transformers.WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    word_tokenizer(SPOKEN, "<eot>", "<eot>", "<sot>").save_pretrained(path)
    return path


def tiny_captioner(path, seed: int = 0):
    """A ViT (32 x 32, patch 8) + GPT-2 VisionEncoderDecoder over SEEN, with its image processor."""
    enc = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)
    dec = transformers.GPT2Config(vocab_size=len(SEEN), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                  add_cross_attention=True, is_decoder=True, bos_token_id=2, eos_token_id=1,
                                  tie_word_embeddings=False)
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 2, 1, 1
    torch.manual_seed(seed)
    model = transformers.VisionEncoderDecoderModel(config=cfg)
    with torch.no_grad():  # an untied, larger output layer: captions that follow the image
        model.decoder.lm_head.weight.normal_(0.0, 3.0)
        model.decoder.lm_head.weight[:3].fill_(-1.0)  # [UNK], [EOS], [BOS] lose
        cross = model.decoder.transformer.h[0].crossattention
        for w in (cross.q_attn.weight, cross.c_attn.weight, cross.c_proj.weight):  # what is seen outweighs what was said
            w.normal_(0.0, 1.0)
    model.save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    word_tokenizer(SEEN, "[UNK]", "[EOS]", "[BOS]").save_pretrained(path)
    return path


def tiny_lm(path, favourite: str | None = None, seed: int = 0):
    """A 1-layer GPT-2 over WORDS (and the words heard and seen); with `favourite`, every next token is that word, else a
    random untied output layer that never picks [UNK] or [EOS] (the answer follows the input)."""
    tok = word_tokenizer(WORDS, "[UNK]", "[EOS]")
    cfg = transformers.GPT2Config(vocab_size=len(WORDS), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                  eos_token_id=1, bos_token_id=1, pad_token_id=1, tie_word_embeddings=favourite is not None)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg)
    if favourite is None:
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 3.0)
            model.lm_head.weight[:2].fill_(-1.0)
    if favourite is not None:  # every next token is `favourite`: logits = W h, h = ln_f(...) ~ 1 + noise
        with torch.no_grad():
            model.lm_head.weight.zero_()  # (tied to the input embeddings: the answer ignores the input)
            model.transformer.ln_f.bias.fill_(1.0)
            model.lm_head.weight[WORDS.index(favourite)].fill_(10.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
