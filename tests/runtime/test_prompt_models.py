"""The model stages of prompts from the video on tiny random models saved to local folders
(`tiny_prompt_models`): the transcript against Whisper's `generate` on a PCM track the test
wrote itself, the captions against `generate` on frames the test decoded itself, the summary
against the LM's `generate` on a prompt that holds both; no audio; the caches; bad folders."""

from __future__ import annotations

import json
import logging
from fractions import Fraction

import av
import numpy as np
import pytest

from v2m.core.errors import InputError

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tiny_prompt_models import tiny_captioner, tiny_lm, tiny_whisper  # noqa: E402

from v2m.runtime import captions as cap  # noqa: E402
from v2m.runtime import describe_models as dm  # noqa: E402
from v2m.runtime import transcribe as tr  # noqa: E402
from v2m.runtime.synth import make_test_video  # noqa: E402

SR = 16000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompt_models")
    return {"whisper": tiny_whisper(d / "whisper"), "captioner": tiny_captioner(d / "captioner"),
            "lm": tiny_lm(d / "lm")}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    """int16 mono at 16 kHz: a sweep plus noise (what the tiny Whisper hears)."""
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


def _video_with_track(path, samples: np.ndarray, video_s: float = 1.0):
    """A small H.264 + 16 kHz mono PCM .mkv: the track decodes to exactly samples / 32768."""
    with av.open(str(path), "w", format="matroska") as out:
        vs = out.add_stream("libx264", rate=12)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = out.add_stream("pcm_s16le", rate=SR, layout="mono")
        for i in range(int(video_s * 12)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i % 256, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        for start in range(0, samples.size, 1024):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SR, start, Fraction(1, SR)
            out.mux(aus.encode(frame))
        out.mux(aus.encode(None))
    return path


def _direct_transcript(model_dir, audio: np.ndarray) -> str:
    """The oracle: Whisper's own feature extractor and generate on one window of float audio."""
    proc = transformers.WhisperProcessor.from_pretrained(model_dir)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    feats = proc.feature_extractor(audio, sampling_rate=SR, return_tensors="pt")["input_features"]
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=model.config.max_target_positions // 2, do_sample=False)
    return proc.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


def test_transcript_equals_whisper_generate_on_the_track(tmp_path, models):
    samples = _speech(32.0)  # two windows: 30 s and 2 s
    v = _video_with_track(tmp_path / "speech.mkv", samples)
    windows = list(tr.audio_windows(v))
    audio = samples.astype(np.float32) / 32768
    assert [w.size for w in windows] == [30 * SR, 2 * SR]
    np.testing.assert_array_equal(np.concatenate(windows), audio)  # s16 -> float is exact
    first, second = (_direct_transcript(models["whisper"], w) for w in (audio[: 30 * SR], audio[30 * SR :]))
    assert first != second  # the tiny model's words depend on what it hears
    assert tr.transcribe_video(v, models["whisper"]) == f"{first} {second}"


def test_no_audio_track_is_an_empty_transcript(short_video, models, caplog):
    caplog.set_level(logging.INFO, logger="v2m.describe")
    prompt, details = dm.write_prompt(short_video.path, dm.PromptModels(whisper=str(models["whisper"])))
    assert details["transcript"] == "" and "no audio track" in caplog.text
    assert prompt == details["describer_prompt"] and details["written_by"] == "describer"


def _frames_by_hand(path, times) -> np.ndarray:
    """The oracle's frames: every frame decoded, the last one at or before each time, as RGB."""
    with av.open(str(path)) as c:
        decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return np.stack([[img for t0, img in decoded if t0 <= t + 1e-6][-1] for t in times])


def test_captions_equal_generate_on_the_frames(tmp_path, models):
    v = tmp_path / "scenes.mp4"
    make_test_video(v, duration_s=2.0, cuts=(0.5, 1.0, 1.5))
    frames = cap.sample_frames(v, 4)
    assert cap.frame_times(2.0, 4) == [0.25, 0.75, 1.25, 1.75]
    np.testing.assert_array_equal(frames, _frames_by_hand(v, [0.25, 0.75, 1.25, 1.75]))
    d = models["captioner"]
    model = transformers.VisionEncoderDecoderModel.from_pretrained(d).eval()
    pixels = transformers.ViTImageProcessor.from_pretrained(d)(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, max_new_tokens=cap.MAX_NEW_TOKENS, do_sample=False)
    want = [t.strip() for t in transformers.AutoTokenizer.from_pretrained(d).batch_decode(ids, skip_special_tokens=True)]
    assert cap.caption_frames(d, frames) == want and len(set(want)) >= 2  # four scenes, not one caption
    assert cap.caption_video(v, d, k=4) == cap.dedupe(want)
    assert cap.dedupe(["a dog", " A  dog ", "", "a cat", "a dog"]) == ["a dog", "a cat"]


def test_the_lm_reads_the_transcript_and_the_captions(tmp_path, models):
    v = _video_with_track(tmp_path / "speech.mkv", _speech(3.0), video_s=2.0)
    m = dm.PromptModels(whisper=str(models["whisper"]), captioner=str(models["captioner"]), lm=str(models["lm"]),
                        frames=3)
    prompt, details = dm.write_prompt(v, m)
    assert details["transcript"] and details["captions"] and details["written_by"] == "lm"
    text = details["summary_input"]
    assert details["transcript"] in text and all(c in text for c in details["captions"])
    traits = dm.VideoTraits(**{k: details["traits"][k] for k in dm.VideoTraits.__dataclass_fields__})
    assert text.startswith(dm.SUMMARY_PROMPT.split("{")[0]) and dm.traits_sentence(traits) in text
    tok = transformers.AutoTokenizer.from_pretrained(models["lm"])
    lm = transformers.AutoModelForCausalLM.from_pretrained(models["lm"]).eval()
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = lm.generate(**ids, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
    assert prompt == tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip().splitlines()[0]
    assert prompt != dm.lm_answer(models["lm"], dm.summary_input(traits))  # what was heard and seen matters


def test_without_an_lm_the_caption_words_follow_the_describer(short_video, models):
    prompt, details = dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(models["captioner"]), frames=4))
    words = dm.caption_words(details["captions"])
    assert words and prompt == f"{details['describer_prompt']}, {', '.join(words)}"
    assert details["written_by"] == "describer+captions"
    assert dm.caption_words(["a dog on the beach", "a dog running on the beach at sunset", "the sky"]) == \
        ["dog", "beach", "running"]


def test_stage_results_are_cached_by_content(tmp_path, short_video, models, monkeypatch):
    d = tmp_path / "captioner"
    tiny_captioner(d)
    first = dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(d), frames=2))

    def boom(*a, **k):
        raise AssertionError("the stage ran again")

    monkeypatch.setattr(cap, "caption_video", boom)
    assert dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(d), frames=2)) == first  # cached
    with pytest.raises(AssertionError, match="ran again"):  # other weights: another key
        dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(tiny_captioner(d, seed=1)), frames=2))
    with pytest.raises(AssertionError, match="ran again"):  # another frame count: another key
        dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(d), frames=3))
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = sorted((tmp_path / "cache").rglob("*"))
    d2 = tiny_captioner(tmp_path / "captioner2", seed=2)
    dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(d2), frames=3), use_cache=False)
    assert sorted((tmp_path / "cache").rglob("*")) == before  # --no-cache: nothing written


def test_bad_model_folders(tmp_path, short_video):
    with pytest.raises(InputError, match="--whisper .*not a local model directory.*save_pretrained"):
        dm.PromptModels(whisper=str(tmp_path / "missing"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="--lm .*no weights"):
        dm.PromptModels(lm=str(tmp_path / "cfg"))
    with pytest.raises(InputError, match="--frames"):
        dm.PromptModels(frames=0)


def test_faster_whisper_folders_use_faster_whisper(tmp_path, short_video, monkeypatch):
    """A CTranslate2 folder goes to faster_whisper.WhisperModel (a stand-in here: v2m does not
    depend on it), one call per window; without the package: one line naming it."""
    import importlib.machinery
    import sys
    import types

    d = tmp_path / "ct2"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.bin").write_bytes(b"\0")
    if "faster_whisper" not in sys.modules:
        from v2m.core.errors import BackendUnavailable

        with pytest.raises(BackendUnavailable, match="faster_whisper"):
            dm.PromptModels(whisper=str(d))
    calls = []

    class WhisperModel:
        def __init__(self, path, **kw):
            calls.append(path)

        def transcribe(self, audio, beam_size):
            seg = types.SimpleNamespace(text=f" {audio.size} samples ")
            return iter([seg]), None

    fake = types.ModuleType("faster_whisper")
    fake.__spec__ = importlib.machinery.ModuleSpec("faster_whisper", None)
    fake.WhisperModel = WhisperModel
    monkeypatch.setitem(sys.modules, "faster_whisper", fake)
    v = _video_with_track(tmp_path / "speech.mkv", _speech(31.0))
    _, details = dm.write_prompt(v, dm.PromptModels(whisper=str(d)))
    assert details["transcript"] == f"{30 * SR} samples {SR} samples" and calls == [str(d)]


def test_cli_prompt_with_models_and_bad_folders(tmp_path, short_video, models, capsys):
    from v2m.cli.main import main

    args = ["prompt", str(short_video.path), "--whisper", str(models["whisper"]), "--captioner",
            str(models["captioner"]), "--frames", "3", "--json"]
    assert main(args) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    m = dm.PromptModels(whisper=str(models["whisper"]), captioner=str(models["captioner"]), frames=3)
    assert (res["prompt"], res["transcript"]) == (dm.write_prompt(short_video.path, m)[0], "")
    for bad in (["--whisper", str(tmp_path)], ["--captioner", str(tmp_path / "no")], ["--frames", "3"],
                ["--captioner", str(models["captioner"]), "--frames", "65"]):
        assert main(["prompt", str(short_video.path), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("save_pretrained" in err or "--frames" in err), err
    from v2m.cli.support import CHECKS

    assert CHECKS["frames"](dm.MAX_FRAMES) is None and CHECKS["frames"](dm.MAX_FRAMES + 1)  # one limit


def test_generate_checks_the_model_folders_first(tmp_path, short_video, capsys):
    from v2m.cli.main import main

    out = tmp_path / "out.mp4"
    rc = main(["generate", str(short_video.path), "-o", str(out), "--model", "demo", "--lm", str(tmp_path)])
    assert rc == 2 and "--prompt auto" in capsys.readouterr().err
    rc = main(["generate", str(short_video.path), "-o", str(out), "--model", "demo", "--prompt", "auto",
               "--whisper", str(tmp_path / "nothing")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a local model directory" in err and not out.exists()


def test_generate_prompt_auto_with_models(tmp_path, short_video, models, capsys):
    from v2m.cli.main import main

    d = tiny_lm(tmp_path / "warm-lm", favourite="warm")
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", "demo", "--backend",
               "onnxruntime", "--steps", "2", "--prompt", "auto", "--captioner", str(models["captioner"]),
               "--frames", "2", "--lm", str(d), "--json", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    want = dm.write_prompt(short_video.path, dm.PromptModels(captioner=str(models["captioner"]), lm=str(d), frames=2))
    assert json.loads(capsys.readouterr().out)["prompt"] == want[0] and want[0].startswith("warm warm")


def test_an_instruct_lm_gets_its_chat_template(tmp_path):
    d = tiny_lm(tmp_path / "chat")
    tok = transformers.AutoTokenizer.from_pretrained(d)
    tok.chat_template = "{% for m in messages %}[USER] {{ m['content'] }}{% endfor %} [ASSISTANT] music"
    tok.save_pretrained(d)
    templated = tok.apply_chat_template([{"role": "user", "content": "slow warm pad"}], add_generation_prompt=True,
                                        tokenize=False)
    assert templated == "[USER] slow warm pad [ASSISTANT] music"
    lm = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
    ids = tok(templated, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = lm.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    want = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert dm.lm_answer(d, "slow warm pad", max_new_tokens=5) == want != dm.lm_answer(d, "fast bpm video", max_new_tokens=5)
