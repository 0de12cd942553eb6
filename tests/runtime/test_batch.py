"""Batch mode: folders, file lists, manifests; batched == alone; resume; hostile inputs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from v2m.runtime import batch
from v2m.runtime.cli import main
from v2m.runtime.synth import make_test_video


def _run(capsys, *argv):
    rc = main([str(a) if not isinstance(a, bytes) else os.fsdecode(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc, err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("v2m: error:"), err
    assert "Traceback" not in err


def _summary(out_dir):
    data = json.loads((out_dir / "summary.json").read_text())
    return data, {os.path.basename(i["input"]): i for i in data["items"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, short_video):
    """videos/ with two clip.mp4 in different subfolders, a name with spaces and non-UTF-8 bytes,
    a text file, a symlink loop, and a hidden file."""
    root = tmp_path_factory.mktemp("batch") / "videos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(short_video.path, root / "a" / "clip.mp4")
    make_test_video(root / "b" / "clip.mp4", duration_s=2.0, seed=1)
    make_test_video(os.fsdecode(os.fsencode(str(root)) + b"/caf\xe9 clip.mkv"), duration_s=1.0, seed=2)
    (root / "notes.txt").write_text("not a video\n")
    (root / ".hidden.mp4").write_text("ignored")
    os.symlink("..", root / "a" / "loop")
    return root


def test_folder_batch_resume_and_overwrite(capsys, tiny_bundle, folder, tmp_path):
    out = tmp_path / "out"
    args = ("generate", folder, "-o", out, "--model", tiny_bundle, "--device", "cpu", "--steps", "2", "--seed", "5")
    rc, stdout, err = _run(capsys, *args)
    assert rc == 1  # notes.txt failed
    assert "3 ok, 1 failed" in stdout
    assert [ln for ln in err.splitlines() if ln.strip()] == [ln for ln in err.splitlines() if "notes.txt" in ln]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    data, items = _summary(out)
    assert data["counts"] == {"ok": 3, "failed": 1, "skipped": 0, "pending": 0}
    assert items["notes.txt"]["status"] == "failed" and "notes.txt" in items["notes.txt"]["reason"]
    names = sorted(p.name for p in out.iterdir())
    assert "a__clip.mp4" in names and "b__clip.mp4" in names
    assert os.fsdecode(b"caf\xe9 clip.mp4") in names
    assert not any(n.startswith(".") for n in names)  # no temp files left
    assert all(i["seed"] == 5 for i in data["items"])
    sidecar = json.loads((out / "a__clip.mp4.v2m.json").read_text())
    assert sidecar["inputs"]["seed"] == 5 and len(sidecar["output_sha256"]) == 64
    stamp = (out / "b__clip.mp4").stat().st_mtime_ns

    # Re-run: complete outputs are skipped (verified), a corrupted one is redone.
    (out / "a__clip.mp4").write_bytes(b"truncated")
    rc, stdout, _ = _run(capsys, *args)
    data, items = _summary(out)
    assert data["counts"]["skipped"] == 2 and data["counts"]["ok"] == 1
    assert (out / "b__clip.mp4").stat().st_mtime_ns == stamp
    assert (out / "a__clip.mp4").stat().st_size > 1000
    # A different prompt is a different job: redone.
    rc, _, _ = _run(capsys, *args, "--prompt", "dark ambient", "--overwrite", "--format", "wav")
    data, _ = _summary(out)
    assert data["counts"]["ok"] == 3 and (out / "a__clip.wav").is_file()


def test_batched_equals_alone(tiny_bundle, short_video, make_video, tmp_path):
    from v2m.runtime import Pipeline

    other = make_video("other.mp4", duration_s=2.0, seed=4, cuts=(0.7,))
    pipe = Pipeline.from_pretrained(tiny_bundle)
    calls = []
    orig = pipe.backend.sample
    pipe.backend.sample = lambda noise, *a, **k: calls.append(noise.shape[0]) or orig(noise, *a, **k)
    jobs = batch.collect_inputs([short_video.path, other], tmp_path / "o")
    jobs[0].seed, jobs[1].seed = 11, 12
    summary = batch.run_batch(pipe, jobs, batch.BatchOptions(tmp_path / "o", format="wav", steps=3, progress=False))
    assert summary.count("ok") == 2 and calls == [2]  # one sampler call, B = 2
    for job, seed in zip(jobs, (11, 12)):
        alone = pipe.generate(job.video, seed=seed, steps=3).audio
        got, sr = sf.read(str(job.output), dtype="float32", always_2d=True)
        assert got.T.shape == alone.shape
        np.testing.assert_allclose(got.T, np.clip(alone, -1, 1), atol=2e-3)


def test_manifest(capsys, tiny_bundle, short_video, tmp_path):
    shutil.copy(short_video.path, tmp_path / "my clip.mp4")
    lines = [
        json.dumps({"video": "my clip.mp4", "prompt": "lofi", "seed": 1, "output": "first.wav"}),
        "{not json",
        json.dumps({"video": "my clip.mp4", "tempo": 120}),
        "",
        json.dumps({"video": "missing.mp4", "seed": 2}),
        json.dumps({"video": str(tmp_path / "my clip.mp4"), "seed": 3}),
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "new" / "out"
    rc, stdout, err = _run(capsys, "generate", "--manifest", tmp_path / "jobs.jsonl", "-o", out, "--model", tiny_bundle,
                           "--device", "cpu", "--steps", "2", "--quiet")
    assert rc == 1 and "2 ok, 3 failed" in stdout
    assert len(err.strip().splitlines()) == 3 and "Traceback" not in err
    assert "line 2: not valid JSON" in err and "unknown keys ['tempo']" in err and "missing.mp4" in err
    assert (out / "first.wav").is_file() and (out / "my clip.mp4").is_file()
    data, _ = _summary(out)
    assert [i["status"] for i in data["items"]] == ["ok", "failed", "failed", "failed", "ok"]


def test_file_list_names_and_output_is_input(capsys, tiny_bundle, short_video, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        shutil.copy(short_video.path, tmp_path / d / "clip.mp4")
    jobs = batch.collect_inputs([tmp_path / "x" / "clip.mp4", tmp_path / "y" / "clip.mp4", short_video.path], tmp_path / "o")
    batch.assign_outputs(jobs, tmp_path / "o")
    assert [j.output.name for j in jobs] == ["x__clip.mp4", "y__clip.mp4", "short.mp4"]
    # Writing into the input folder: the output would be the input itself -> refused, input untouched.
    before = (tmp_path / "x" / "clip.mp4").read_bytes()
    rc, _, err = _run(capsys, "generate", tmp_path / "x", "-o", tmp_path / "x", "--model", tiny_bundle)
    _one_line_error(rc, err)
    rc, stdout, err = _run(capsys, "generate", tmp_path / "x" / "clip.mp4", short_video.path, "-o", tmp_path / "x",
                           "--model", tiny_bundle, "--device", "cpu", "--steps", "2", "--format", "mp4")
    assert rc == 1 and "is the input video" in err
    assert (tmp_path / "x" / "clip.mp4").read_bytes() == before


def test_bad_batch_inputs_one_line(capsys, tiny_bundle, short_video, tmp_path, monkeypatch):
    base = ("--model", tiny_bundle, "--device", "cpu", "--steps", "2")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / ".DS_Store").write_text("")
    rc, _, err = _run(capsys, "generate", tmp_path / "empty", "-o", tmp_path / "o", *base)
    _one_line_error(rc, err)
    assert "no videos found" in err
    (tmp_path / "afile").write_text("x")
    rc, _, err = _run(capsys, "generate", short_video.path, short_video.path, "-o", tmp_path / "afile" / "out", *base)
    _one_line_error(rc, err)
    monkeypatch.setattr(batch.os, "access", lambda *a, **k: False)
    rc, _, err = _run(capsys, "generate", short_video.path, short_video.path, "-o", tmp_path / "ro", *base)
    _one_line_error(rc, err)
    assert "not writable" in err
    monkeypatch.undo()
    rc, _, err = _run(capsys, "generate", "--manifest", tmp_path / "nope.jsonl", "-o", tmp_path / "o", *base)
    _one_line_error(rc, err)
    rc, _, err = _run(capsys, "generate", "-o", tmp_path / "o", *base)
    _one_line_error(rc, err)
    rc, _, err = _run(capsys, "generate", short_video.path, short_video.path, "-o", tmp_path / "o", *base, "--batch-size", "0")
    _one_line_error(rc, err)


def test_progress_bar_renders(short_video):
    import io

    s = io.StringIO()
    p = batch.Progress(4, enabled=True, stream=s)
    p.start_batch(2, 8)
    p.on_step(3)
    p.advance(2)
    p.message("v2m: failed: x: y")
    p.close()
    text = s.getvalue()
    assert "2/4 videos" in text and "step" in text and "ETA" in text and "v2m: failed: x: y\n" in text
    assert not batch.Progress(3, stream=io.StringIO()).enabled  # not a terminal: quiet
