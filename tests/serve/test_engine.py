"""The engine's parts without a server: the batching scheduler, edge validation, the sampler call.

Oracles: the groups a hand-written arrival sequence must produce; SamplerOptions' own rule;
Pipeline.generate's latents for each seed alone (an independent path through the pipeline).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from v2m.core.bundle import SamplerConfig
from v2m.core.errors import InputError
from v2m.runtime.prepared import Prepared
from v2m.runtime.request import Request
from v2m.runtime.sampler import SamplerOptions
from v2m.serve.config import ServeConfig, parse_generate_fields, suffix_of
from v2m.serve.engine import Scheduler

OPTS = SamplerOptions(steps=4)


def _item(length: int, seed: int = 0, opts: SamplerOptions = OPTS) -> Prepared:
    return Prepared(request=Request(seed=seed), options=opts, seed=seed, video=None, info=None, duration_s=1.0,
                    curve=np.zeros(length, np.float32), curve_frames=length, curve_impl="numpy",
                    emb=np.zeros((3, 2), np.float32), mask=np.ones(3, np.float32))


def _scheduler(max_batch=3, wait_s=5.0):
    groups: list[list[int]] = []

    def run(items):
        groups.append([p.seed for p in items])
        return [(p.seed, len(items)) for p in items]

    return Scheduler(run, max_batch, wait_s), groups


def test_groups_by_key_in_arrival_order_up_to_max_batch():
    sched, groups = _scheduler(max_batch=3)
    gate = threading.Event()
    sched.start()
    blocker = sched.call(gate.wait, 10)  # hold the device while the queue fills
    lengths = [13, 19, 13, 13, 13, 19, 13]
    futs = [sched.enqueue(_item(n, seed=i), expected=False) for i, n in enumerate(lengths)]
    futs.append(sched.enqueue(_item(13, seed=7, opts=SamplerOptions(steps=5)), expected=False))  # other options
    gate.set()
    assert blocker.result(10)
    results = [f.result(10) for f in futs]
    sched.stop(5)
    # head 0 (13) takes 2, 3 (max 3); then 1 (19) with 5; then 4, 6 (13); then 7 alone (other steps)
    assert groups == [[0, 2, 3], [1, 5], [4, 6], [7]]
    assert [r[1] for r in results] == [3, 2, 3, 3, 2, 2, 2, 1]


def test_a_lone_request_never_waits_and_the_window_is_bounded():
    """No assertion reads the clock: a result's timeout (10 s) is the bound, a third of the 30 s
    window a lone request would wait for if it waited."""
    sched, groups = _scheduler(max_batch=8, wait_s=30.0)
    sched.start()
    assert sched.enqueue(_item(13), expected=False).result(10) == (0, 1)  # nobody else admitted: no wait
    sched.stop(5)

    sched, groups = _scheduler(max_batch=8, wait_s=0.5)
    sched.start()
    sched.expect(2)  # two more admitted (uploading): the head waits for them, at most 0.5 s
    f1 = sched.enqueue(_item(13, seed=1))
    time.sleep(0.1)
    f2 = sched.enqueue(_item(13, seed=2))
    assert f1.result(10) == (1, 2) and f2.result(10) == (2, 2)
    f3 = sched.enqueue(_item(13, seed=3), expected=False)  # the third never came: one still expected
    assert f3.result(10) == (3, 1)
    sched.stop(5)


def test_stop_fails_what_is_queued():
    sched, _ = _scheduler()
    gate = threading.Event()
    sched.start()
    sched.call(gate.wait, 10)
    fut = sched.enqueue(_item(13), expected=False)
    threading.Timer(0.2, gate.set).start()
    sched.stop(10)
    with pytest.raises(RuntimeError, match="shutting down"):
        fut.result(10)


def test_fields_defaults_and_errors():
    form = parse_generate_fields({"prompt": "x", "seed": "7", "shift": "2.5", "use_curve": "no"}, 100)
    req, fmt = form.request, form.fmt
    assert req.options(SamplerConfig()) == SamplerOptions(steps=96, cfg_scale=4.0, shift=2.5, use_curve=False)
    assert (req.seed, fmt, suffix_of(fmt)) == (7, "mp4", ".mp4")
    for fields, words in [({"steps": "0"}, "steps"), ({"steps": "1.5"}, "steps"), ({"cfg_scale": "inf"}, "cfg_scale"),
                          ({"solver": "dpm"}, "solver"), ({"shift": "-1"}, "shift"), ({"format": "mp3"}, "format"),
                          ({"use_curve": "maybe"}, "use_curve"), ({"prompt": "x" * 101}, "prompt"),
                          ({"seed": str(2**63)}, "seed"), ({"bogus": "1"}, "unknown"),
                          ({"format": "flac", "keep_audio": "-6"}, "keep_audio"),
                          ({"keep_audio": "100"}, "keep_audio")]:
        with pytest.raises(InputError, match=words):
            parse_generate_fields(fields, 100)


def test_config_limits():
    for kw in [{"max_batch": 0}, {"max_queue": 0}, {"timeout_s": 0.0}, {"max_upload_mb": -1.0}, {"port": 70000},
               {"api_key": "short"}, {"allow_dir": "/no/such/dir"}, {"batch_wait_ms": float("nan")}]:
        with pytest.raises(InputError):
            ServeConfig(**kw)
    assert ServeConfig().host == "127.0.0.1"


def test_sample_group_matches_each_generation_alone(tiny_bundle, short_video):
    """B variants of one prepared video in one `Pipeline.sample` call vs `generate` per seed
    (its own preparation and sampler call: an independent path)."""
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu")
    p = pipe.prepare(short_video.path, Request(prompt="warm synth", seed=3, steps=5))
    items = [p, pipe.variant(p, seed=4), pipe.variant(p, seed=5)]
    results = pipe.sample(items)
    assert [r.batch_size for r in results] == [3, 3, 3]
    for r, s in zip(results, (3, 4, 5)):
        want = pipe.generate(short_video.path, prompt="warm synth", seed=s, steps=5).latents
        err = np.sum((r.latents.astype(np.float64) - want) ** 2)
        assert err == 0 or 10 * np.log10(np.sum(want.astype(np.float64) ** 2) / err) >= 50


def test_cli_import_stays_cheap():
    code = ("import sys, v2m.cli.main as c; c.build_parser(); "
            "bad = [m for m in ('torch', 'fastapi', 'ray', 'uvicorn', 'starlette') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
