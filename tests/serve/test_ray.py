"""Ray: `v2m generate DIR -o OUT --ray` against the local batch, and a Ray Serve deployment.

Oracles: the local batch run (`batch/`) on the same folder: outputs byte-identical,
summary.json equal but for timings; the CLI's audio for a served request.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from v2m.cli.main import main as cli_main
from v2m.runtime.synth import make_test_video

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")

from _serve_util import free_port, httpx  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three clips (two of one latent length, so they are batched) and a broken file."""
    d = tmp_path_factory.mktemp("rayvids") / "videos"
    (d / "sub").mkdir(parents=True)
    make_test_video(d / "a.mp4", duration_s=1.0, size=(96, 64), cuts=(0.5,), seed=1)
    make_test_video(d / "sub" / "a.mp4", duration_s=1.0, size=(96, 64), cuts=(0.3,), seed=2)
    make_test_video(d / "c.mp4", duration_s=1.5, size=(96, 64), cuts=(0.7,), seed=3)
    (d / "broken.mp4").write_bytes((d / "a.mp4").read_bytes()[:2000])
    return d


def _summary(path):
    data = json.loads((path / "summary.json").read_text())
    data.pop("wall_s")
    for item in data["items"]:
        item.pop("timings")
        item["output"] = item["output"] and os.path.basename(item["output"])
    return data


def test_ray_batch_matches_the_local_batch(ray_local, folder, tiny_bundle, tmp_path, capsys):
    common = ["--model", str(tiny_bundle), "--backend", "torch", "--device", "cpu", "--seed", "9", "--steps", "6",
              "--format", "wav", "--batch-size", "8", "-q"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert cli_main(["generate", str(folder), "-o", str(local), *common]) == 2  # one video failed on bad input
    # --ray-cpus 1: the actor runs 1 CPU thread, like this process (conftest's one_thread)
    assert cli_main(["generate", str(folder), "-o", str(remote), *common, "--ray", "--ray-cpus", "1"]) == 2
    out = capsys.readouterr()
    assert "3 ok, 1 failed, 0 skipped" in out.out and "broken.mp4" in out.err
    want, got = _summary(local), _summary(remote)
    assert got == want
    assert [i["batch_size"] for i in got["items"] if i["status"] == "ok"] == [2, 1, 2]  # a.mp4 + sub/a.mp4 together
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in remote.iterdir())
    assert {"a.wav", "sub__a.wav", "c.wav"} <= set(names)
    for name in ("a.wav", "sub__a.wav", "c.wav"):
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    # resume on Ray: everything complete is verified and skipped; a removed output is made again
    (remote / "c.wav").unlink()
    assert cli_main(["generate", str(folder), "-o", str(remote), *common, "--ray", "--ray-cpus", "1"]) == 2
    data = json.loads((remote / "summary.json").read_text())
    status = {os.path.relpath(i["input"], folder): (i["status"], i["reason"]) for i in data["items"]}
    assert status["c.mp4"][0] == "ok" and status["broken.mp4"][0] == "failed"
    assert [s for s, _ in status.values()].count("skipped") == 2
    assert (remote / "c.wav").read_bytes() == (local / "c.wav").read_bytes()


def test_ray_serve_answers(ray_local, folder, tiny_bundle, tmp_path):
    from ray import serve

    from v2m.serve.ray_app import app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # what `serve run v2m.serve.ray_app:app model=... ...` builds
        application = app({"model": str(tiny_bundle), "backend": "torch", "device": "cpu", "max_batch": "4",
                           "batch_wait_ms": "50", "tmp_dir": str(tmp_path), "replicas": "1", "replica_cpus": "1"})
        serve.run(application, name="v2m", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz", timeout=60).json()["ready"] is True
        with open(folder / "a.mp4", "rb") as f:
            r = httpx.post(f"{url}/v1/generate", data={"seed": "4", "steps": "6", "format": "wav"},
                           files={"video": ("a.mp4", f, "video/mp4")}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-v2m-seed"] == "4" and r.headers["x-v2m-batch-size"] == "1"
        got = sf.read(io.BytesIO(r.content), dtype="float32")[0]
        ref = tmp_path / "ref.wav"
        assert cli_main(["generate", str(folder / "a.mp4"), "-o", str(ref), "--model", str(tiny_bundle), "--backend",
                         "torch", "--device", "cpu", "--seed", "4", "--steps", "6", "-q"]) == 0
        want = sf.read(ref, dtype="float32")[0]
        assert got.shape == want.shape
        err = float(np.sum((got.astype(np.float64) - want) ** 2))
        snr = 300.0 if err == 0 else 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / err)
        assert snr >= 50.0  # Ray Serve batching (here B=1) and the replica's threads: equal up to rounding
        assert "v2m_batch_size_count" in httpx.get(f"{url}/metrics", timeout=30).text
        # candidates through Ray Serve's batcher: each seed variant is one `@serve.batch` call
        with open(folder / "a.mp4", "rb") as f:
            r = httpx.post(f"{url}/v1/generate", data={"seed": "4", "steps": "2", "format": "wav", "candidates": "3"},
                           files={"video": ("a.mp4", f, "video/mp4")}, timeout=120)
        assert r.status_code == 200, r.text
        rows = json.loads(r.headers["x-v2m-candidates"])
        assert [row["seed"] for row in rows] == [4, 5, 6] and sum(row["best"] for row in rows) == 1
        assert 1 <= int(r.headers["x-v2m-batch-size"]) <= 3
    finally:
        serve.shutdown()
    assert not [p for p in tmp_path.glob("v2m-serve-*/*")]
    shutil.rmtree(tmp_path, ignore_errors=True)
