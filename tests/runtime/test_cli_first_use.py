"""A newcomer's path (issue 22, items 14, 21, 22, 23): `demo` names the installed bundle in every
command, extras are checked before any work and named by the command that needs them, help and
`v2m info --model` show the bundle's sampler defaults, `generate --json` replays, and what the
CLI prints names its counts and values readably."""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import shlex
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from v2m.cli import main as cli
from v2m.cli.main import main
from v2m.runtime import pipeline


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def without(monkeypatch):
    """`without("matplotlib")`: that module looks uninstalled to v2m's checks and imports."""
    real = importlib.util.find_spec
    hidden: set[str] = set()

    def find_spec(name, *a, **k):
        return None if name.split(".")[0] in hidden else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    def hide(*names):
        hidden.update(names)
        for n in names:
            monkeypatch.setitem(sys.modules, n, None)  # `import n` raises ImportError

    return hide


# --- item 14: `demo` everywhere -------------------------------------------------------------
def test_serve_model_demo_resolves(capsys, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    import uvicorn

    import v2m.cli.serve as serve_cli

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **kw: ran.append(self.config.app))
    monkeypatch.setattr(serve_cli.signal, "signal", lambda *a: None)
    rc, out, err = _run(capsys, "serve", "--model", "demo", "--port", "8123", "--no-warmup")
    assert rc == 0 and ran and "v2m serve: http://127.0.0.1:8123" in out, err


def test_ray_batch_model_demo_resolves(monkeypatch, tmp_path):
    """run_batch_ray reads the bundle before it starts Ray: `demo` is the installed bundle there too."""
    from v2m.batch import BatchOptions
    from v2m.serve import ray_batch

    class RayStarted(Exception):
        pass

    fake = types.ModuleType("ray")
    fake.is_initialized = lambda: (_ for _ in ()).throw(RayStarted())
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(RayStarted):  # before: BundleError "model bundle 'demo' does not exist"
        ray_batch.run_batch_ray([], BatchOptions(tmp_path / "out"), {"model": "demo", "backend": "auto"})


# --- item 21: extras up front ---------------------------------------------------------------
def test_demo_plot_without_matplotlib_before_any_work(capsys, tmp_path, without, monkeypatch):
    without("matplotlib")
    monkeypatch.setattr(pipeline.Pipeline, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("work")))
    rc, _, err = _run(capsys, "demo", "-o", tmp_path / "d.wav", "--plot", tmp_path / "d.png")
    assert rc == 2 and "`v2m demo --plot` needs matplotlib" in err and "[eval]" in err, err
    assert list(tmp_path.iterdir()) == []


def test_curve_plot_without_matplotlib_before_any_work(capsys, tmp_path, short_video, without, monkeypatch):
    without("matplotlib")
    monkeypatch.setattr(pipeline.Pipeline, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("work")))
    rc, _, err = _run(capsys, "curve", short_video.path, "--plot", tmp_path / "c.png")
    assert rc == 2 and "`v2m curve --plot` needs matplotlib" in err, err


def _eval_folders(tmp_path, short_video):
    videos, outs = tmp_path / "videos", tmp_path / "outs"
    videos.mkdir()
    outs.mkdir()
    (videos / "short.mp4").write_bytes(short_video.path.read_bytes())
    t = np.arange(2 * 44100) / 44100
    sf.write(outs / "short.wav", np.stack([np.sin(2 * np.pi * 220 * t)] * 2, 1).astype(np.float32), 44100)
    return videos, outs


def test_eval_curve_measures_need_no_extra(capsys, caplog, tmp_path, short_video, without):
    """Without librosa and scenedetect: curve correlation and flatness, one warning for the rest."""
    without("librosa", "scenedetect")
    videos, outs = _eval_folders(tmp_path, short_video)
    rc, out, err = _run(capsys, "eval", outs, "--videos", videos, "--json")
    assert rc == 0, err
    v = json.loads(out)["videos"][0]
    assert v["sch"] is None and v["corr"] is not None and v["flatness"] is not None
    warned = caplog.text
    assert "Scene Cut Hit and cut hits are n/a" in warned and "curve correlation and flatness need no extra" in warned
    rc, _, err = _run(capsys, "eval", outs, "--videos", videos, "--no-curves")
    assert rc == 2 and "`v2m eval --no-curves` (Scene Cut Hit) needs librosa and scenedetect" in err, err


def test_scenedetect_quiet_without_verbose(short_video):
    pytest.importorskip("scenedetect")
    from v2m.eval.evaluate import detect_cuts

    logging.getLogger("v2m").setLevel(logging.WARNING)
    detect_cuts(short_video.path)
    assert logging.getLogger("pyscenedetect").getEffectiveLevel() >= logging.WARNING


def test_dev_extra_has_eval_dependencies():
    """The Quick start's SCH column needs librosa: the [dev] extra installs it."""
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    dev = " ".join(project["optional-dependencies"]["dev"])
    assert all(m in dev for m in ("librosa", "scenedetect", "matplotlib"))


# --- item 22: the bundle decides, and --json replays -----------------------------------------
def test_generate_help_defers_to_the_bundle():
    g = cli.build_parser()._subparsers._group_actions[0].choices["generate"]
    text = " ".join(g.format_help().split())
    for flag in ("--steps", "--cfg-scale", "--solver", "--shift", "--curve-guidance"):
        helptext = next(a.help for a in g._actions if flag in a.option_strings)
        assert "default: the bundle's" in helptext and "96" not in helptext, (flag, helptext)
    assert "v2m info --model BUNDLE" in text


def test_info_model_shows_the_sampler_defaults(capsys):
    rc, out, _ = _run(capsys, "info", "--model", "demo", "--json")
    assert rc == 0
    m = json.loads(out)["model"]
    from v2m.core.bundle import load_config
    from v2m.runtime.demo import demo_bundle_path

    sc = load_config(demo_bundle_path()).sampler  # the bundle's, not the sampler's generic defaults (96, 4.0, 0)
    assert (m["steps"], m["cfg_scale"], m["curve_guidance"], m["solver"]) == (sc.steps, sc.cfg_scale,
                                                                            sc.curve_guidance, sc.solver)
    assert (sc.steps, sc.cfg_scale, sc.curve_guidance) == (32, 2.0, 3.0)


def test_info_prints_readable_values(capsys):
    rc, out, _ = _run(capsys, "info", "--model", "demo")
    assert rc == 0
    for line in out.splitlines():
        assert not any(c in line for c in "{}[]'"), line  # no Python reprs
    assert any(line.split()[:2] == ["steps", "32"] for line in out.splitlines())


def test_api_default_backend_is_the_clis():
    default = inspect.signature(pipeline.Pipeline.from_pretrained).parameters["backend"].default
    assert default == "auto" == cli.build_parser().parse_args(["generate", "x", "-o", "y", "-m", "z"]).backend


def test_backend_ort_is_onnxruntime(capsys, short_video):
    rc, out, err = _run(capsys, "curve", short_video.path, "--backend", "ort", "--device", "cpu", "--json")
    assert rc == 0, err
    from v2m.runtime.backends import normalize_backend, resolve_backend

    assert normalize_backend("ORT") == "onnxruntime" and resolve_backend("ort", "demo", "cpu") == ("onnxruntime", "cpu")


def test_generate_json_replays_the_run(capsys, tiny_bundle, short_video, tmp_path):
    out = tmp_path / "a.wav"
    rc, stdout, err = _run(capsys, "generate", short_video.path, "-o", out, "--model", tiny_bundle, "--device", "cpu",
                           "--backend", "torch", "--steps", "3", "--cfg-scale", "2.5", "--solver", "heun",
                           "--shift", "2", "--curve-guidance", "0.5", "--negative-prompt", "noise",
                           "--prompt", "warm pad", "--json", "-q")
    assert rc == 0, err
    run = json.loads(stdout)
    want = {"model": str(tiny_bundle), "steps": 3, "cfg_scale": 2.5, "solver": "heun", "shift": 2.0,
            "curve_guidance": 0.5, "use_curve": True, "negative_prompt": "noise", "prompt": "warm pad",
            "backend": "torch", "device": "cpu", "precision": "fp32"}
    assert {k: run[k] for k in want} == want and isinstance(run["seed"], int)
    argv = shlex.split(run["replay"])
    assert argv[:2] == ["v2m", "generate"]
    argv[argv.index("-o") + 1] = str(tmp_path / "b.wav")
    assert main(argv[1:] + ["-q"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(sf.read(out)[0], sf.read(tmp_path / "b.wav")[0])


# --- item 23: names and messages -------------------------------------------------------------
def test_curve_names_its_counts(capsys, make_video):
    clip = make_video("c.mp4", duration_s=8.0, fps=24.0, size=(160, 120), cuts=(2.0, 5.0))
    rc, out, err = _run(capsys, "curve", clip, "--device", "cpu")
    assert rc == 0, err
    line = out.splitlines()[0]
    assert "24 fps video" in line and "99 frames sampled at 12.305 fps" in line and "99 latent frames" in line
    rc, out, _ = _run(capsys, "curve", clip, "--device", "cpu", "--json")
    d = json.loads(out)
    assert "frames" not in d and d["video_fps"] == 24.0 and d["sampled_frames"] == 99 and d["latent_frames"] == 99


def test_demo_names_no_file_it_removed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(capsys, "demo", "-o", tmp_path / "d.wav", "--duration", "2", "--backend", "ort")
    assert rc == 0, err
    assert "clip.mp4" not in out and "temporary test video (--workdir DIR keeps it)" in out
    rc, out, err = _run(capsys, "demo", "-o", tmp_path / "e.wav", "--duration", "2", "--backend", "ort",
                        "--workdir", tmp_path / "w")
    assert rc == 0 and f"test video {tmp_path / 'w' / 'clip.mp4'}" in out and (tmp_path / "w" / "clip.mp4").is_file()
