"""The shipped demo bundle: installed, small, loads, generates, and its music lands on the cuts.

The alignment check is short on purpose (two held-out cut videos at the bundle's
own sampler settings): it catches a sampler, curve or bundle bug as lost
alignment, which parity tests on random weights cannot see. The full measurement
on 24 held-out videos is `bench/bench_alignment.py` (docs/demo-model.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from v2m.cli.main import main
from v2m.runtime.demo import demo_bundle_path

pytest.importorskip("torch")


def test_installed_small_fp16_weight_free():
    """The paper recipe's bundle (docs/demo-model.md): fp16 DiT, the Oobleck decoder and the distilled
    encoder, all-MiniLM-L6-v2 as its text component, and the fp32 ONNX graphs; within the wheel budget."""
    path = demo_bundle_path()
    files = {p.relative_to(path).as_posix(): p.stat().st_size for p in path.rglob("*") if p.is_file()}
    need = {"config.json", "dit.safetensors", "vae.safetensors", "vae_encoder.safetensors", "manifest.json",
            "text/encoder.onnx", "text/tokenizer.json", "text/manifest.json",
            *(f"onnx/fp32/{g}.onnx" for g in ("text", "schedule", "step", "vae"))}
    assert need <= set(files) and all(f in need or f.startswith("onnx/fp32/") for f in files), sorted(files)
    assert sum(files.values()) <= 80 * 2**20  # the wheel's budget is 100 MB
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["encoder"]["kind"] == "cut" and cfg["preset"] == "demo" and cfg["text"]["kind"] == "sentence"
    assert cfg["sampler"]["empty_prompt"] == "null" and cfg["curve"]["std_floor"] > 0
    from safetensors import safe_open

    with safe_open(str(path / "dit.safetensors"), "np") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"float16"}
        assert f.metadata()["weights"] == "finetuned"


@pytest.fixture(scope="module")
def demo_pipe():
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained("demo", backend="torch", device="cpu")


def test_music_lands_on_the_cuts(demo_pipe, tmp_path):
    """Two held-out cut videos: with the curve, the music curve follows the video's (r >= 0.5) and
    its strongest peaks hit at least half the cuts; without the curve it does clearly worse."""
    from v2m.eval.alignment import alignment_check

    res = alignment_check("demo", tmp_path, count=2, seed=7_777, pipeline=demo_pipe)
    with_curve, without = res["curve"], res["no_curve"]
    assert with_curve["corr"] >= 0.5 and with_curve["cut_hits"] >= 0.5, res
    assert with_curve["corr"] - without["corr"] >= 0.25, res
    assert with_curve["flatness"] <= 0.3, res


def test_demo_command(tmp_path, capsys):
    """`v2m demo` as README's quick start runs it: backend auto is ONNX Runtime on the CPU (the bundle ships its graphs)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo.mp4"
    assert main(["demo", "-o", str(out), "--duration", "6", "--device", "cpu", "--workdir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 10_000 and "trained bundle demo" in text and "music event curve peaks" in text
    assert "backend onnxruntime on cpu" in text


def test_shipped_graphs_match_the_shipped_weights(demo_pipe, synth_video):
    """The ONNX graphs in the bundle and its safetensors are one model: ONNX Runtime's audio is
    PyTorch's (two independent engines, same seed), and the manifest names these weights."""
    pytest.importorskip("onnxruntime")
    from v2m.core.manifest import load_manifest
    from v2m.runtime import Pipeline

    load_manifest(demo_bundle_path()).verify_weights()
    ort = Pipeline.from_pretrained("demo", backend="onnxruntime", device="cpu")
    a = demo_pipe.generate(synth_video.path, prompt="slow 90 bpm minor groove", seed=5, steps=8)
    b = ort.generate(synth_video.path, prompt="slow 90 bpm minor groove", seed=5, steps=8)
    err = np.abs(a.audio - b.audio).max() / np.abs(a.audio).max()
    assert a.audio.shape == b.audio.shape and err < 1e-3, err


def test_changed_weights_refuse_the_graphs(tmp_path):
    """Weights rewritten after the export (a retrained bundle with stale graphs): one clear error,
    not a silently different model on one engine."""
    import shutil

    from v2m.core.errors import BundleError
    from v2m.core.manifest import load_manifest

    pytest.importorskip("onnxruntime")
    from v2m.runtime import Pipeline

    bundle = tmp_path / "b"
    shutil.copytree(demo_bundle_path(), bundle)
    w = bundle / "dit.safetensors"
    data = bytearray(w.read_bytes())
    data[-7] ^= 0x55  # same size, other weights
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="re-export"):
        Pipeline.from_pretrained(str(bundle), backend="onnxruntime", device="cpu")
    with pytest.raises(BundleError, match="re-export"):  # over the hash limit: the size decides
        w.write_bytes(bytes(data[:-1]))
        load_manifest(bundle).verify_weights(hash_limit=0)


def test_model_demo_resolves(capsys, synth_video):
    rc = main(["curve", str(synth_video.path), "--model", "demo", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(data["curve"]) == 62
    peaks = np.sort(np.argsort(data["curve"])[-1:])
    assert 0 <= peaks[0] < 62


def test_eval_with_baseline(tmp_path, capsys):
    """`v2m generate` with and without the curve, then `v2m eval --baseline`: the side-by-side table."""
    pytest.importorskip("scenedetect")
    from v2m.eval.alignment import make_cut_videos

    vids = tmp_path / "videos"
    make_cut_videos(vids, 1, seed=7_778)
    (clip,) = sorted(vids.iterdir())
    for folder, extra in (("out", []), ("base", ["--no-curve"])):
        (tmp_path / folder).mkdir()
        rc = main(["generate", str(clip), "-o", str(tmp_path / folder / (clip.stem + ".wav")), "--model", "demo",
                   "--device", "cpu", "--seed", "3", "-q", *extra])
        assert rc == 0
    capsys.readouterr()
    rc = main(["eval", str(tmp_path / "out"), "--videos", str(vids), "--baseline", str(tmp_path / "base"), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and set(data) == {"with_curve", "no_curve"}
    assert data["with_curve"]["videos"][0]["corr"] > data["no_curve"]["videos"][0]["corr"]
    rc = main(["eval", str(tmp_path / "out"), "--videos", str(vids), "--baseline", str(tmp_path / "base")])
    out = capsys.readouterr().out
    assert rc == 0 and "with curve" in out and "--no-curve" in out and "curve correlation" in out


def test_package_data_ships_every_bundle_file():
    """pyproject's package-data globs cover every file of the demo bundle (the wheel carries it)."""
    import fnmatch
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[2]
    bundle = root / "runtime" / "demo_bundle"
    if not bundle.is_dir():
        pytest.skip("not a source checkout")
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["v2m.runtime"]
    files = [f"demo_bundle/{p.relative_to(bundle).as_posix()}" for p in bundle.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in data) for f in files), (files, data)


def _noisy_still_video(path, seconds: float = 6.0, fps: int = 24) -> None:
    """A fixed textured frame plus sensor-like noise (std 4 of 255), H.264: a clip with no event."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    base = np.stack([(xx * 1.5) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = np.clip(base + rng.normal(0.0, 4.0, base.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_no_events_from_noise(demo_pipe, tmp_path):
    """Curve convention 2 (the demo's curve.std_floor): a still clip's noise is not blown up to unit
    variance. Without the floor (convention 1) the same clip's curve has spurious peaks."""
    video = tmp_path / "still.mp4"
    _noisy_still_video(video)
    floored = demo_pipe.curve(video).curve
    assert demo_pipe.curve_std_floor > 0 and np.abs(floored).max() < 0.1
    old = demo_pipe.curve_std_floor
    try:
        demo_pipe.curve_std_floor = 0.0
        assert np.abs(demo_pipe.curve(video).curve).max() > 0.5
    finally:
        demo_pipe.curve_std_floor = old


def test_output_is_real_stereo(demo_pipe, synth_video):
    """The demo's music is stereo that survives a mono speaker: left/right correlation >= 0.2 and the
    mono mix within 3 dB of the channels (the old demo's channels cancelled: r -0.97, mono -20 dB)."""
    for prompt in ("", "a slow calm piano piece"):
        audio = demo_pipe.generate(synth_video.path, prompt=prompt, seed=1, steps=8).audio.astype(np.float64)
        left, right = audio
        r = float(np.corrcoef(left, right)[0, 1])
        channels = 0.5 * (np.mean(left**2) + np.mean(right**2))
        mono_db = 10 * np.log10(np.mean((0.5 * (left + right)) ** 2) / channels)
        assert r >= 0.2 and mono_db >= -3.0, (prompt, r, mono_db)
