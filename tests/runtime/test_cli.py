"""The CLI: the main commands, and one clear line + non-zero exit (no output file) for bad input."""

import json

import av
import numpy as np
import pytest

from v2m.cli.main import main
from v2m.core.curves import curve_peaks
from v2m.models.checkpoint import load_safetensors, save_safetensors


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc, err):
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("v2m: error:"), err
    assert "Traceback" not in err


def test_generate_wav_and_mp4(capsys, tiny_bundle, short_video, tmp_path):
    rc, out, _ = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.wav", "--model", tiny_bundle,
                      "--device", "cpu", "--seed", "7", "--steps", "8", "--prompt", "warm synth pop")
    assert rc == 0 and "seed 7" in out and (tmp_path / "o.wav").is_file()
    rc, out, _ = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.mp4", "--model", tiny_bundle,
                      "--device", "cpu", "--steps", "8", "--backend", "torch")
    assert rc == 0
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1


def test_curve_json(capsys, tiny_bundle, synth_video):
    rc, out, _ = _run(capsys, "curve", synth_video.path, "--model", tiny_bundle, "--device", "cpu", "--json")
    assert rc == 0
    data = json.loads(out)
    assert len(data["curve"]) == 62 and data["impl"] == "numpy"
    # the oracle is the clip's own cut list: the curve peaks where the video was cut
    # (the 31-frame smoothing merges nearby cuts, so every peak found is at a cut, not every cut a peak)
    peaks = curve_peaks(np.asarray(data["curve"]), len(synth_video.cuts)) / data["latent_rate"]
    assert len(peaks) >= 2
    assert all(np.min(np.abs(np.asarray(synth_video.cuts) - t)) < 2.5 / data["latent_rate"] for t in peaks), peaks


def test_info(capsys):
    rc, out, _ = _run(capsys, "info", "--json")
    assert rc == 0 and json.loads(out)["backends"]["torch"] is True


def test_init_model(capsys, tmp_path):
    rc, out, _ = _run(capsys, "init-model", "--preset", "tiny", "--seed", "1", "-o", tmp_path / "b")
    assert rc == 0 and (tmp_path / "b" / "config.json").is_file()
    assert {p.name for p in (tmp_path / "b").glob("*.safetensors")} == {
        "dit.safetensors", "vae.safetensors", "vae_encoder.safetensors", "encoder.safetensors", "text.safetensors"}


def _bad_inputs(tmp_path, synth_video_audio):
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(synth_video_audio.path.read_bytes()[:1000])
    audio_only = tmp_path / "audio_only.m4a"
    with av.open(str(audio_only), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=44100)
        s.layout = "stereo"
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {
        "missing": tmp_path / "nope.mp4",
        "zero-byte": zero,
        "text file": text,
        "truncated": trunc,
        "audio only": audio_only,
    }


@pytest.mark.parametrize("case", ["missing", "zero-byte", "text file", "truncated", "audio only"])
def test_bad_video(capsys, tiny_bundle, synth_video_audio, tmp_path, case):
    video = _bad_inputs(tmp_path, synth_video_audio)[case]
    out = tmp_path / "out.mp4"
    rc, _, err = _run(capsys, "generate", video, "-o", out, "--model", tiny_bundle, "--device", "cpu", "--steps", "2")
    _assert_one_line_error(rc, err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_output_in_missing_directory(capsys, tiny_bundle, short_video, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "out.mp4"
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", out, "--model", tiny_bundle, "--device", "cpu")
    _assert_one_line_error(rc, err)
    assert not out.exists()


def test_bundle_missing_component(capsys, tiny_bundle_copy, short_video, tmp_path):
    (tiny_bundle_copy / "vae.safetensors").unlink()
    out = tmp_path / "out.wav"
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", out, "--model", tiny_bundle_copy, "--device", "cpu")
    _assert_one_line_error(rc, err)
    assert "vae" in err and not out.exists()


def test_checkpoint_with_wrong_shape(capsys, tiny_bundle_copy, short_video, tmp_path):
    path = tiny_bundle_copy / "dit.safetensors"
    sd = load_safetensors(path)
    sd["in_proj.weight"] = sd["in_proj.weight"][:, :-1].contiguous()  # drop the curve channel
    save_safetensors(sd, path)
    out = tmp_path / "out.wav"
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", out, "--model", tiny_bundle_copy, "--device", "cpu")
    _assert_one_line_error(rc, err)
    assert "in_proj.weight" in err and not out.exists()


@pytest.mark.parametrize("content", [None, "{not json", '{"preset": "tiny"}'])
def test_broken_bundle_config(capsys, tmp_path, short_video, content):
    bundle = tmp_path / "b"
    bundle.mkdir()
    if content is not None:
        (bundle / "config.json").write_text(content)
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.wav", "--model", bundle, "--device", "cpu")
    _assert_one_line_error(rc, err)


def test_unsupported_output_suffix(capsys, tiny_bundle, short_video, tmp_path):
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.txt", "--model", tiny_bundle)
    _assert_one_line_error(rc, err)


def test_pickle_checkpoint_refused(tmp_path):
    from v2m.core.errors import BundleError

    with pytest.raises(BundleError, match="pickle"):
        load_safetensors(tmp_path / "model.pt")
