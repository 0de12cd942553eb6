"""The CLI a person expects: every bad option value is one line and exit 2 before any
video is decoded or model loaded; help shows defaults and examples; --json, the
progress bar, demo's temporary folder, and one-line errors for bad media and writes."""

from __future__ import annotations

import argparse
import io
import json
import tempfile

import numpy as np
import pytest

from v2m.cli import main as cli
from v2m.cli import support as cli_support
from v2m.cli.main import main
from v2m.runtime import pipeline, video


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(rc, err, rc_want=2):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == rc_want and len(lines) == 1 and lines[0].startswith("v2m: error:"), (rc, err)
    assert "Traceback" not in err and "usage:" not in err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a model is loaded or a video decoded or probed."""

    def refuse(*a, **k):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(pipeline.Pipeline, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(video, "probe", refuse)
    monkeypatch.setattr(video.VideoReader, "__init__", refuse)


# (argv after the command's required arguments, what the message names)
GENERATE_BAD = [
    (["--steps", "0"], "--steps"),
    (["--steps", "-1"], "--steps"),
    (["--steps", "10001"], "--steps"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**63)], "--seed"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["--cfg-scale", "nan"], "--cfg-scale"),
    (["--cfg-scale", "inf"], "--cfg-scale"),
    (["--keep-audio", "nan"], "--keep-audio"),
    (["--keep-audio", "inf"], "--keep-audio"),
    (["--keep-audio", "100"], "--keep-audio"),
    (["--video-stream", "-1"], "--video-stream"),
    (["--text-embeddings", "/no/such/file.safetensors"], "--text-embeddings"),
    (["--steps", "many"], "--steps"),  # argparse's own errors are one line too
    (["--reencode", "sometimes"], "--reencode"),
    (["--backend", "cuda"], "--backend"),
    (["--no-such-option"], "--no-such-option"),
    # issue 22, item 15: bounded guidance and shift (no numpy warnings, no square wave), device index, Ray
    (["--cfg-scale", "1e308"], "--cfg-scale"),
    (["--cfg-scale", "1e30"], "--cfg-scale"),
    (["--cfg-scale", "-1"], "--cfg-scale"),
    (["--curve-guidance", "1e30"], "--curve-guidance"),
    (["--shift", "1e-308"], "--shift"),
    (["--shift", "1e9"], "--shift"),
    (["--device", "cuda:99999999999999999999"], "--device"),
    (["--ray-cpus", "inf"], "--ray-cpus"),
    (["--ray-cpus", "nan"], "--ray-cpus"),
    (["--ray-cpus", "0"], "--ray-cpus"),
    (["--ray-actors", "0"], "--ray-actors"),
    (["--backend", "ortx"], "--backend"),
]


@pytest.mark.parametrize("extra, flag", GENERATE_BAD, ids=[" ".join(a) for a, _ in GENERATE_BAD])
def test_generate_bad_values(capsys, no_work, tmp_path, extra, flag):
    rc, _, err = _run(capsys, "generate", tmp_path / "clip.mp4", "-o", tmp_path / "o.mp4", "--model", tmp_path, *extra)
    assert flag in _one_line(rc, err)
    assert list(tmp_path.iterdir()) == []


OTHER_BAD = [
    (["generate", "{d}/a.mp4", "{d}/b.mp4", "-o", "{d}/out", "--model", "{d}", "--batch-size", "0"], "--batch-size"),
    (["generate", "{d}/a.mp4", "-o", "{d}/o.wav"], "--model"),  # a required option missing
    (["curve", "{d}/a.mp4", "--model", "{d}", "--device", "tpu"], "--device"),
    (["demo", "--duration", "0"], "--duration"),
    (["demo", "--duration", "-3"], "--duration"),
    (["demo", "--duration", "1e9"], "--duration"),
    (["demo", "--duration", "nan"], "--duration"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "-o", "{d}/demo.txt"], "demo.txt"),
    (["init-model", "-o", "{d}/b", "--seed", "-1"], "--seed"),
    (["bench", "--model", "{d}", "--repeats", "0"], "--repeats"),
    (["bench", "--model", "{d}", "--duration", "0"], "--duration"),
    (["bench", "--model", "{d}", "--size", "15x15"], "--size"),
    (["bench", "--model", "{d}", "--size", "big"], "--size"),
    (["bench", "--model", "{d}", "--steps", "0"], "--steps"),
    (["export", "{d}", "-o", "{d}/x", "--opset", "5"], "--opset"),
    (["build", "{d}", "--device", "cpu"], "--device"),
    (["eval", "{d}", "--videos", "{d}", "--tolerance", "0"], "--tolerance"),
    (["eval", "{d}", "--videos", "{d}", "--tolerance", "nan"], "--tolerance"),
    (["frobnicate"], "frobnicate"),
    (["serve", "--model", "{d}", "--replica-cpus", "inf"], "--replica-cpus"),
    (["serve", "--model", "{d}", "--replicas", "0"], "--replicas"),
]


@pytest.mark.parametrize("argv, flag", OTHER_BAD, ids=[" ".join(a) for a, _ in OTHER_BAD])
def test_other_commands_bad_values(capsys, no_work, tmp_path, argv, flag):
    rc, _, err = _run(capsys, *[a.format(d=tmp_path) for a in argv])
    assert flag in _one_line(rc, err)
    assert list(tmp_path.iterdir()) == []


def test_every_check_has_an_option():
    """Each CHECKS entry is some subcommand's option (a renamed option would go unchecked)."""
    parser = cli.build_parser()
    dests = {a.dest for sp in _subparsers(parser).values() for a in sp._actions}
    assert set(cli_support.CHECKS) <= dests


def test_sampler_rule_is_sampler_options():
    """--steps and --cfg-scale use SamplerOptions' rule, not a copy of it."""
    from v2m.runtime.sampler import MAX_STEPS, SamplerOptions

    for steps in (0, 1, MAX_STEPS, MAX_STEPS + 1):
        try:
            SamplerOptions(steps=steps)
            ok = True
        except ValueError:
            ok = False
        assert (cli_support.CHECKS["steps"](steps) is None) == ok


def _subparsers(parser) -> dict[str, argparse.ArgumentParser]:
    """Every subcommand, nested ones (`train dit`) included."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            out = {}
            for name, sub in a.choices.items():
                out[name] = sub
                if any(isinstance(x, argparse._SubParsersAction) for x in sub._actions):
                    out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
            return out
    raise AssertionError("no subcommands")


def test_help_shows_defaults_and_examples():
    parser = cli.build_parser()
    top = parser.format_help()
    assert "exit codes:" in top and "128+N" in top and "internal error" in top
    for name, sub in _subparsers(parser).items():
        text = sub.format_help()
        assert "examples:" in text, name
        examples = text.split("examples:")[1].strip().splitlines()
        assert 1 <= len(examples) <= 3 and all(e.strip().startswith("v2m ") for e in examples), name
        fmt = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
                continue
            shown = fmt._get_help_string(action) % {**vars(action), "default": action.default}
            assert action.help and len(action.help) > 8, (name, action.dest)
            assert action.required or "default" in shown, (name, action.dest, shown)


def test_usage_error_is_one_line(capsys):
    rc, _, err = _run(capsys, "generate")
    line = _one_line(rc, err)
    assert "-o/--output" in line and "v2m generate --help" in line


# --- results: --json, progress, demo ---------------------------------------------------


def test_generate_json(capsys, tiny_bundle, short_video, tmp_path):
    out = tmp_path / "o.mp4"
    rc, stdout, err = _run(capsys, "generate", short_video.path, "-o", out, "--model", tiny_bundle, "--device", "cpu",
                           "--steps", "2", "--seed", "11", "--json")
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 1  # nothing else on stdout
    data = json.loads(lines[0])
    assert data["output"] == str(out) and data["seed"] == 11 and data["steps"] == 2
    assert data["duration_s"] == pytest.approx(2.0) and data["video_stream"] == 0 and data["video_lost_s"] == 0
    assert {"load", "decode", "sampler", "vae", "write", "total"} <= set(data["timings"])
    assert data["timings"]["total"] >= data["timings"]["sampler"] > 0
    assert out.is_file()


def test_progress_bar_on_a_terminal(capsys, tiny_bundle, short_video, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_support, "_is_terminal", lambda s: True)
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.wav", "--model", tiny_bundle,
                      "--device", "cpu", "--steps", "3")
    assert rc == 0 and "step 3/3" in err and "ETA" in err and "\r[" in err
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", tmp_path / "p.wav", "--model", tiny_bundle,
                      "--device", "cpu", "--steps", "3", "--quiet")
    assert rc == 0 and "step" not in err  # (piped, no --quiet: test_step_progress_unit)


def test_step_progress_unit():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    bar = cli_support.StepProgress(4, stream=s)
    for i in range(4):
        bar(i)
    bar.close()
    text = s.getvalue()
    assert "step 4/4" in text and "[########################]" in text and text.endswith("\n")
    quiet = io.StringIO()
    bar = cli_support.StepProgress(4, stream=quiet)
    bar(0)
    bar.close()
    assert quiet.getvalue() == ""


def test_demo_cleans_up_and_writes_audio(capsys, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "demo.wav"
    rc, stdout, err = _run(capsys, "demo", "-o", out, "--duration", "1", "--device", "cpu")
    assert rc == 0, err
    assert list(scratch.iterdir()) == []  # the bundle and clip went with the temporary folder
    import soundfile as sf

    assert sf.info(str(out)).duration == pytest.approx(1.0, abs=1e-3)  # demo -o x.wav: the music alone


# --- media problems through the CLI: one line, before the model loads -----------------


def test_still_image_refused_before_loading(capsys, no_work_but_probe, tmp_path):
    import av

    fake = tmp_path / "photo.mp4"
    with av.open(str(fake), "w", format="image2pipe") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = 64, 48, "rgb24"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        c.mux(s.encode(None))
    rc, _, err = _run(capsys, "generate", fake, "-o", tmp_path / "o.mp4", "--model", tmp_path)
    assert "still image" in _one_line(rc, err)


def test_reencode_never_before_loading(capsys, no_work_but_probe, make_video, tmp_path):
    src = make_video("vp8.webm", codec="libvpx", duration_s=1.0)
    out = tmp_path / "o.mp4"
    rc, _, err = _run(capsys, "generate", src, "-o", out, "--model", tmp_path, "--reencode", "never")
    line = _one_line(rc, err)
    assert "vp8" in line and ".mkv" in line and not out.exists()


def test_video_stream_not_in_batch_mode(capsys, no_work_but_probe, tmp_path):
    rc, _, err = _run(capsys, "generate", tmp_path / "a.mp4", tmp_path / "b.mp4", "-o", tmp_path / "out",
                      "--model", tmp_path, "--video-stream", "1")
    assert "--video-stream" in _one_line(rc, err)


@pytest.fixture
def no_work_but_probe(monkeypatch):
    """Fail the test if a model is loaded (probing the video is allowed: it is the check)."""

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(pipeline.Pipeline, "from_pretrained", classmethod(refuse))


def test_int32_weights_one_line(capsys, tiny_bundle_copy, short_video, tmp_path):
    import torch

    from v2m.models.checkpoint import load_safetensors, save_safetensors

    path = tiny_bundle_copy / "vae.safetensors"
    sd = load_safetensors(path)
    k = next(iter(sd))
    sd[k] = sd[k].to(torch.int32)
    save_safetensors(sd, path)
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.wav", "--model", tiny_bundle_copy,
                      "--device", "cpu", "--steps", "2")
    assert "not floating point" in _one_line(rc, err) and not (tmp_path / "o.wav").exists()


def test_full_disk_through_the_cli(capsys, tiny_bundle, short_video, tmp_path, full_disk):
    """ENOSPC while writing (simulated in-process, see conftest; test_hostile_media has a real
    tmpfs). Before: a traceback and exit 1 for .wav, a silently truncated .flac."""
    full_disk(room=2048)
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", tmp_path / "o.flac", "--model", tiny_bundle,
                      "--device", "cpu", "--steps", "2")
    assert "No space left on device" in _one_line(rc, err)
    assert list(tmp_path.iterdir()) == []


def test_output_folder_removed_during_generation(capsys, tiny_bundle, short_video, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = pipeline.Pipeline.generate

    def generate_then_vanish(self, *a, **k):
        result = real(self, *a, **k)
        out_dir.rmdir()
        return result

    monkeypatch.setattr(pipeline.Pipeline, "generate", generate_then_vanish)
    rc, _, err = _run(capsys, "generate", short_video.path, "-o", out_dir / "o.mp4", "--model", tiny_bundle,
                      "--device", "cpu", "--steps", "2")
    assert "does not exist" in _one_line(rc, err) and not out_dir.exists()
