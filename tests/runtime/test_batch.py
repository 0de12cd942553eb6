"""Batch mode: folders, file lists, manifests; batched == alone; resume; hostile inputs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from v2m import batch
from v2m.cli.main import main
from v2m.runtime import media
from v2m.runtime.request import Request
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
    assert rc == 2  # notes.txt failed (bad input: exit 2)
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
    summary = batch.run_batch(pipe, jobs, batch.BatchOptions(tmp_path / "o", format="wav", request=Request(steps=3), progress=False))
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
    assert rc == 2 and "2 ok, 3 failed" in stdout
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
    assert rc == 2 and "is the input video" in err
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
    monkeypatch.setattr(batch.jobs.os, "access", lambda *a, **k: False)
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


# --- --profile / --trace in batch mode ----------------------------------------------------
def _x_events(trace_path):
    return [e for e in json.loads(trace_path.read_text())["traceEvents"] if e["ph"] == "X"]


def test_batch_profile_and_trace(capsys, tiny_bundle, folder, tmp_path):
    """One report of the whole run: a run per finished video, a group per sampler call with its
    B, shapes and steps; one trace with every video's preparation and every group."""
    out, rep_path, trace_path = tmp_path / "out", tmp_path / "prof" / "report.json", tmp_path / "trace.json"
    rc, stdout, err = _run(capsys, "generate", folder, "-o", out, "--model", tiny_bundle, "--device", "cpu",
                           "--steps", "3", "--batch-size", "2", "--format", "wav",
                           "--profile", rep_path, "--trace", trace_path)
    assert rc == 2 and "3 ok, 1 failed" in stdout  # notes.txt
    assert f"wrote profile report {rep_path}" in stdout and f"wrote Chrome trace {trace_path}" in stdout
    assert "batch: 3 ok, 1 failed, 0 skipped" in stdout and "batched B=2 L=25" in stdout  # the table
    r = json.loads(rep_path.read_text())
    b = r["batch"]
    assert r["runs"] == 3 and b["counts"] == {"ok": 3, "failed": 1, "skipped": 0, "pending": 0}
    assert b["interrupted"] is False and b["wall_ms"] > 0
    groups = b["groups"]
    assert [(g["kind"], g["B"], g["status"], g["sampler_calls"]) for g in groups] == [
        ("batched", 2, "ok", 1), ("batched", 1, "ok", 1)]
    assert groups[0]["L"] == 25 and groups[1]["L"] < 25 and groups[0]["S"] == groups[1]["S"]
    assert sorted(os.path.basename(v) for v in groups[0]["videos"]) == ["clip.mp4", "clip.mp4"]
    assert r["shapes"] == {"L": [groups[1]["L"], 25], "B": [1, 2], "S": groups[0]["S"], "steps": 3}
    for g in groups:
        assert len(g["step_ms"]) == 3 and all(v > 0 for v in g["step_ms"]) and g["step_summary_ms"]["n"] == 3
        assert sum(g["step_ms"]) <= 1.01 * g["stages_ms"]["sampler"]
        assert g["stages_ms"]["vae"] > 0 and g["stages_ms"]["write"] > 0
    assert [len(s["runs_ms"]) for s in r["steps"]] == [2, 2, 2]  # per step index, over the 2 groups
    assert {"decode", "encode", "curve", "text", "sampler", "vae", "write"} <= set(r["stages"])
    assert all(len(s["runs_ms"]) == 3 for s in r["stages"].values())  # one per finished video
    items = {os.path.basename(v["input"]) + str(v["group"]): v for v in b["videos"]}
    assert items["notes.txtNone"]["status"] == "failed" and "sampler" not in items["notes.txtNone"]["stages_ms"]
    assert sorted(v["group"] for v in b["videos"] if v["status"] == "ok") == [0, 0, 1]
    # a group's sampler time is shared by its videos; the totals add up
    group_sampler = sum(g["stages_ms"]["sampler"] for g in groups)
    assert b["stage_totals_ms"]["sampler"] == pytest.approx(group_sampler)
    assert sum(r["stages"]["sampler"]["runs_ms"]) == pytest.approx(group_sampler)

    xs = _x_events(trace_path)
    names = [e["name"] for e in xs]
    assert sum(n.startswith("video ") for n in names) == 4  # notes.txt's failed preparation too
    assert {"encode", "curve", "text", "sampler", "vae", "write"} <= set(names)
    for g in groups:
        span = next(e for e in xs if e["name"].startswith(f"group {g['index']} batched B={g['B']}"))
        steps = [e for e in xs if e["tid"] == 2 and e["args"]["group"] == g["index"]]
        assert [e["name"] for e in steps] == ["step 0", "step 1", "step 2"]
        assert all(span["ts"] - 1 <= e["ts"] and e["ts"] + e["dur"] <= span["ts"] + span["dur"] + 1 for e in steps)




def test_batch_profile_failed_group_then_windows(windowed_bundle, short_video, make_video, tmp_path):
    """A group whose sampler call fails is recorded as failed without steps; the profiler goes on
    to time a long video's windows as one group of several sampler calls."""
    from v2m.runtime import Pipeline
    from v2m.runtime.profiler import Profiler
    from v2m.runtime.windows import overlap_frames, plan_windows

    a = make_video("a.mp4", duration_s=1.0, seed=1)
    c = make_video("c.mp4", duration_s=1.0, seed=2)
    pipe = Pipeline.from_pretrained(windowed_bundle, backend="torch", device="cpu", precision="fp32")
    orig = pipe.backend.sample

    def sample(noise, cond, plan, on_step=None, stage_noise=None):
        if noise.shape[0] == 2:  # the batched pair fails after one step
            on_step(0)
            raise RuntimeError("device lost")
        return orig(noise, cond, plan, on_step, stage_noise)

    pipe.backend.sample = sample
    jobs = batch.collect_inputs([a, c, short_video.path], tmp_path / "o")
    prof = Profiler(device="cpu", trace=True)
    opts = batch.BatchOptions(tmp_path / "o", format="wav", request=Request(steps=3), batch_size=2, progress=False)
    summary = batch.run_batch(pipe, jobs, opts, profiler=prof)
    assert [j.status for j in jobs] == ["failed", "failed", "ok"]
    r = prof.report()
    g0, g1 = r["batch"]["groups"]
    assert (g0["kind"], g0["B"], g0["status"], g0["step_ms"], g0["sampler_calls"]) == ("batched", 2, "failed", [], 0)
    assert "device lost" in g0["reason"]
    n_win = len(plan_windows(25, 16, overlap_frames(16, pipe.config.sampler.window_overlap)))
    assert n_win >= 2
    assert (g1["kind"], g1["B"], g1["L"], g1["status"], g1["sampler_calls"]) == ("windows", 1, 25, "ok", n_win)
    assert len(g1["step_ms"]) == 3 * n_win
    assert sum(g1["step_ms"]) <= 1.01 * g1["stages_ms"]["sampler"]  # the windows' VAE decodes are in no step
    assert r["runs"] == 1 and [len(s["runs_ms"]) for s in r["steps"]] == [n_win] * 3
    assert [v["group"] for v in r["batch"]["videos"]] == [0, 0, 1]
    data, _ = _summary(tmp_path / "o")
    assert data["counts"]["ok"] == 1 and summary.count("failed") == 2
    assert all("sampler" in i["timings"] for i in data["items"])  # the failed pair's share too


def test_batch_profile_bad_paths_fail_up_front(capsys, tiny_bundle, short_video, tmp_path, monkeypatch):
    """Report paths that cannot work end the command before the model is loaded: one line, exit 2."""
    from v2m.cli import batch as cli

    def no_model(args):
        raise AssertionError("the model was loaded before the report paths were checked")

    monkeypatch.setattr(cli, "load_pipeline", no_model)
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "out"
    base = ("generate", short_video.path, short_video.path, "-o", out, "--model", tiny_bundle, "--format", "wav")
    cases = [
        (("--profile", tmp_path), "is a folder"),
        (("--profile", tmp_path / "p.json", "--trace", tmp_path / "p.json"), "both name"),
        (("--trace", out / "summary.json"), "the batch summary"),
        (("--profile", out / "short.wav"), "the output of"),
        (("--profile", tmp_path / "afile" / "p.json"), "is a file, not a folder"),
    ]
    for flags, msg in cases:
        rc, stdout, err = _run(capsys, *base, *flags)
        _one_line_error(rc, err)
        assert rc == 2 and msg in err and "--" in err
    assert not any(out.iterdir())


def test_batch_profile_written_when_interrupted(capsys, tiny_bundle, short_video, make_video, tmp_path, monkeypatch):
    """Ctrl-C during a batch still writes the report and trace of what ran, marked interrupted."""
    other = make_video("other.mp4", duration_s=2.0, seed=4)
    rep_path, trace_path = tmp_path / "r.json", tmp_path / "t.json"

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(media, "finalize_audio", interrupt)  # after the pair was sampled and decoded
    rc, stdout, err = _run(capsys, "generate", short_video.path, other, "-o", tmp_path / "o", "--model", tiny_bundle,
                           "--device", "cpu", "--steps", "2", "--format", "wav",
                           "--profile", rep_path, "--trace", trace_path)
    assert rc == 130 and "v2m: interrupted" in err
    assert "wrote profile report" in stdout and "wrote Chrome trace" in stdout
    r = json.loads(rep_path.read_text())
    b = r["batch"]
    assert b["interrupted"] is True and b["counts"]["pending"] == 2 and r["runs"] == 0
    (g,) = b["groups"]
    assert g["status"] == "interrupted" and g["B"] == 2 and len(g["step_ms"]) == 2
    assert any(e["name"].startswith("group 0") for e in _x_events(trace_path))


def _manifest_jobs(tmp_path, *entries):
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    jobs = batch.read_manifest(tmp_path / "jobs.jsonl")
    batch.assign_outputs(jobs, tmp_path, "mp4")
    return jobs


def test_output_that_is_another_jobs_input_is_refused(short_video, tmp_path):
    """Issue 22 item 1. Before: line 1 wrote over d.mp4, then line 2 generated from line 1's output."""
    for name in ("a.mp4", "d.mp4"):
        shutil.copy(short_video.path, tmp_path / name)
    (tmp_path / "sub").mkdir()
    jobs = _manifest_jobs(tmp_path, {"video": "a.mp4", "output": "d.mp4"}, {"video": "d.mp4"},
                          {"video": "a.mp4", "output": "sub/../d.mp4"}, {"video": "d.mp4", "output": str(tmp_path / "a")})
    assert [j.status for j in jobs] == ["failed", "pending", "failed", "failed"]
    assert "is the input of jobs.jsonl line 2" in jobs[0].reason and "line 2" in jobs[2].reason
    assert "is the input of jobs.jsonl line 1" in jobs[3].reason  # a.mp4 (the suffix is added)
    os.link(tmp_path / "d.mp4", tmp_path / "hard.mp4")  # another name of the same file
    jobs = _manifest_jobs(tmp_path, {"video": "a.mp4", "output": "hard.mp4"}, {"video": "d.mp4", "output": "e.mp4"})
    assert [j.status for j in jobs] == ["failed", "pending"]


def test_duplicate_outputs_fail_after_the_first(capsys, tiny_bundle, short_video, tmp_path):
    """Issue 22 item 2. Before: both lines reported ok and one result was silently lost."""
    shutil.copy(short_video.path, tmp_path / "a.mp4")
    out = tmp_path / "out"
    entries = [{"video": "a.mp4", "output": "same.wav", "seed": 1}, {"video": "a.mp4", "output": "./SAME.wav", "seed": 2},
               {"video": "a.mp4", "seed": 3, "output": "x/../same.wav"}, {"video": "a.mp4", "seed": 4}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    rc, stdout, err = _run(capsys, "generate", "--manifest", tmp_path / "jobs.jsonl", "-o", out, "--model", tiny_bundle,
                           "--device", "cpu", "--steps", "2", "--quiet")
    assert rc == 2 and "2 ok, 2 failed" in stdout, (stdout, err)
    data, _ = _summary(out)
    assert [i["status"] for i in data["items"]] == ["ok", "failed", "failed", "ok"]
    assert all("is also the output of jobs.jsonl line 1" in i["reason"] for i in data["items"][1:3])
    assert sorted(p.name for p in out.glob("*.*") if p.name != "summary.json" and not p.name.endswith(".v2m.json")) == \
        ["a.mp4", "same.wav"]


def test_output_whose_sidecar_name_is_too_long_fails_up_front(short_video, tmp_path):
    """Issue 22 item 11: the sidecar `NAME.v2m.json` is written after the work; a 250-byte output
    name made it fail then."""
    shutil.copy(short_video.path, tmp_path / "a.mp4")
    jobs = _manifest_jobs(tmp_path, {"video": "a.mp4", "output": "x" * 246 + ".wav"},
                          {"video": "a.mp4", "output": "y" * 240 + ".wav"})
    assert [j.status for j in jobs] == ["failed", "pending"]
    assert "limit of 255" in jobs[0].reason
