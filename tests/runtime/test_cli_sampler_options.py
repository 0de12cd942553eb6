"""The sampler's CLI options: they reach the sampler, and bad values are one line before any work."""

import json

import numpy as np
import pytest
import soundfile as sf

from v2m.cli.main import main


def _gen(tmp_path, bundle, video, *extra, out="o.wav"):
    return main(["generate", str(video), "-o", str(tmp_path / out), "-m", str(bundle), "--device", "cpu",
                 "--seed", "3", "--steps", "4", "-q", *extra])


def test_options_reach_the_sampler(tmp_path, tiny_bundle, short_video, capsys):
    assert _gen(tmp_path, tiny_bundle, short_video.path, out="base.wav") == 0
    base, _ = sf.read(tmp_path / "base.wav")
    for i, extra in enumerate((["--solver", "heun"], ["--shift", "3"], ["--negative-prompt", "harsh noise"],
                               ["--no-curve"], ["--curve-guidance", "1.5"])):
        assert _gen(tmp_path, tiny_bundle, short_video.path, *extra, out=f"v{i}.wav") == 0, capsys.readouterr().err
        audio, _ = sf.read(tmp_path / f"v{i}.wav")
        assert audio.shape == base.shape and np.abs(audio - base).max() > 1e-3, extra


def test_result_info_records_the_options(tiny_bundle, short_video):
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(tiny_bundle)
    res = pipe.generate(short_video.path, "x", seed=1, steps=3, solver="heun", shift=2.0, negative_prompt="y",
                        curve_guidance=0.5)
    assert res.info["solver"] == "heun" and res.info["shift"] == 2.0 and res.info["curve_guidance"] == 0.5
    assert res.info["guidance_branches"] == ["cond", "uncond", "nocurve"] and res.info["model_evals_per_step"] == 2
    assert len(res.step_ms) == 3  # one per solver step, whatever its stages


def test_bundle_defaults_apply(tiny_bundle_copy, short_video):
    from v2m.runtime import Pipeline

    cfg = json.loads((tiny_bundle_copy / "config.json").read_text())
    cfg["sampler"].update(solver="heun", shift=2.0, curve_guidance=0.25)
    (tiny_bundle_copy / "config.json").write_text(json.dumps(cfg))
    pipe = Pipeline.from_pretrained(tiny_bundle_copy)
    opts = pipe.sampler_options()
    assert (opts.solver, opts.shift, opts.curve_guidance) == ("heun", 2.0, 0.25)
    assert pipe.sampler_options(use_curve=False).curve_guidance == 0.0  # the baseline drops the bundle's curve guidance


@pytest.mark.parametrize("extra,words", [
    (["--steps", "0"], "steps"), (["--steps", "-1"], "steps"), (["--steps", "10001"], "steps"),
    (["--cfg-scale", "nan"], "cfg_scale"), (["--cfg-scale", "inf"], "cfg_scale"),
    (["--shift", "0"], "shift"), (["--shift", "-2"], "shift"), (["--shift", "nan"], "shift"),
    (["--curve-guidance", "nan"], "curve_guidance"), (["--no-curve", "--curve-guidance", "1"], "curve guidance needs"),
    (["--seed", "-1"], "seed"), (["--seed", str(2**63)], "seed"),
])
def test_bad_values_are_one_line_before_any_work(tmp_path, short_video, capsys, extra, words, monkeypatch):
    import v2m.runtime.pipeline as pl

    monkeypatch.setattr(pl.Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "-m", str(tmp_path / "nope"),
            "--device", "cpu", *extra]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o.wav").exists()


def test_unknown_solver_is_refused(tmp_path, short_video, capsys):
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "-m", "x", "--solver", "rk4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--solver" in err[0] and "heun" in err[0]


def test_batch_mode_takes_the_options(tmp_path, tiny_bundle, make_video, capsys):
    videos = [make_video(f"v{i}.mp4", duration_s=1.0) for i in range(2)]
    out = tmp_path / "out"
    rc = main(["generate", *map(str, videos), "-o", str(out), "-m", str(tiny_bundle), "--device", "cpu", "--steps", "2",
               "--format", "wav", "--solver", "heun", "--negative-prompt", "x", "--seed", "1", "-q"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["ok"] == 2
    side = json.loads(next(out.glob("*.v2m.json")).read_text())
    assert side["inputs"]["sampler"] == {"solver": "heun", "negative_prompt": "x"}


def test_sao_solvers_reach_the_cli(tmp_path, tiny_bundle, short_video, capsys):
    """`--solver dpmpp-2m` runs a Stable Audio Open bundle; on a v2m bundle it is one line, exit 2."""
    pytest.importorskip("tokenizers")
    sao = tmp_path / "sao"
    assert main(["init-model", "--preset", "sao-tiny", "-o", str(sao)]) == 0
    capsys.readouterr()
    assert _gen(tmp_path, sao, short_video.path, "--solver", "dpmpp-2m", "--steps", "2") == 0, capsys.readouterr().err
    assert sf.read(tmp_path / "o.wav")[0].shape[0] > 0
    rc = _gen(tmp_path, tiny_bundle, short_video.path, "--solver", "dpmpp-2m", out="v.wav")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "euler or heun" in err[0], err
    assert not (tmp_path / "v.wav").exists()
