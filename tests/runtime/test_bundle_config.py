"""A hostile or broken config.json: every malformed, out-of-range or too-large value is one
line naming the key and the file, exit 2, before any model is built (issue 22, items 6-9).
The rules themselves are tables in `v2m.core.config_schema`."""

from __future__ import annotations

import json

import pytest

from v2m.cli.main import main
from v2m.core import jsonio
from v2m.core.bundle import BundleConfig, load_config
from v2m.core.errors import BundleError, InputError
from v2m.models import bundle as bundle_mod

DELETE = object()

# (dotted key, value): each was an exit 1 (a TypeError, ZeroDivisionError, MemoryError), a
# hang, or a silent exit 0 before the config was validated where it is read
BAD = [
    ("dit.width", "64"), ("dit.width", None), ("dit.heads", 0), ("dit.depth", -2), ("dit.mlp_dim", 1.5),
    ("dit.width", 524288), ("dit.depth", 1e7), ("vae.channels", 131072), ("vae.channels", -8),
    ("vae.strides", "2,4,7,8,8"), ("vae.strides", [2, 4, 7, 8, 0]), ("curve.kernel", "31"), ("curve.kernel", 30),
    ("curve.fps", 1e7), ("curve.fps", 0), ("audio.sample_rate", 1e12), ("audio.sample_rate", 10**12),
    ("audio.hop_length", 0), ("audio.channels", True), ("encoder.mean", [0.5]), ("encoder.std", [0, 0, 0]),
    ("encoder.input_size", 0), ("encoder.config", DELETE), ("encoder.input_size", DELETE),
    ("encoder.config.num_heads", 0), ("sampler.max_frames", 0), ("sampler.max_frames", 1),
    ("sampler.steps", "96"), ("sampler.cfg_scale", 1e308), ("sampler.shift", 1e-308), ("text.vocab_size", -1),
]


def _edit(bundle, dotted: str, value) -> None:
    path = bundle / "config.json"
    cfg = json.loads(path.read_text())
    *parents, key = dotted.split(".")
    d = cfg
    for p in parents:
        d = d[p]
    if value is DELETE:
        del d[key]
    else:
        d[key] = value
    path.write_text(json.dumps(cfg))


@pytest.fixture
def nothing_built(monkeypatch):
    monkeypatch.setattr(bundle_mod, "build_component", lambda *a, **k: pytest.fail("a model was built"))


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v!r}"[:40] for k, v in BAD])
def test_bad_value_is_one_line_naming_the_key(capsys, tiny_bundle_copy, short_video, tmp_path, nothing_built,
                                              key, value):
    _edit(tiny_bundle_copy, key, value)
    out = tmp_path / "o.wav"
    rc = main(["generate", str(short_video.path), "-o", str(out), "--model", str(tiny_bundle_copy),
               "--backend", "torch", "--device", "cpu", "--steps", "1"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("v2m: error:"), err
    assert key in lines[0] and "config.json" in lines[0], lines[0]
    assert not out.exists()


def test_presets_pass(tmp_path):
    """Every preset's config (both families, every encoder) passes its own rules."""
    for preset in bundle_mod.PRESET_NAMES:
        for encoder in ("dinov2", "cut", "motion"):
            d = bundle_mod.bundle_config(preset, encoder).to_dict()
            BundleConfig.from_dict(json.loads(json.dumps(d)))


def test_demo_bundle_passes():
    from v2m.runtime.demo import demo_bundle_path

    assert load_config(demo_bundle_path()).sampler.steps == 32


def test_a_huge_value_is_cut_short_in_the_message(tiny_bundle_copy):
    _edit(tiny_bundle_copy, "dit.width", "x" * 1_000_000)
    with pytest.raises(BundleError, match=r"dit\.width must be an integer") as e:
        load_config(tiny_bundle_copy)
    assert len(str(e.value)) < 300


def test_hop_must_match_the_vae(tiny_bundle_copy):
    _edit(tiny_bundle_copy, "audio.hop_length", 2048)
    with pytest.raises(BundleError, match=r"audio\.hop_length 2048 is not the product of vae\.strides"):
        load_config(tiny_bundle_copy)


# --- deeply nested JSON -------------------------------------------------------------------
DEEP = "[" * 100000


def test_deep_config_json(capsys, tiny_bundle_copy, short_video, tmp_path):
    (tiny_bundle_copy / "config.json").write_text(DEEP)
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", str(tiny_bundle_copy)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "nested deeper than" in err, err


def test_deep_export_manifest(tiny_bundle_copy):
    from v2m.core.manifest import load_manifest

    (tiny_bundle_copy / "manifest.json").write_text(DEEP)
    with pytest.raises(BundleError, match="manifest.json: JSON nested deeper than 64 levels; re-export"):
        load_manifest(tiny_bundle_copy)


def test_deep_batch_manifest_line(tmp_path):
    from v2m.batch import read_manifest

    (tmp_path / "m.jsonl").write_text('{"video": "a.mp4"}\n' + DEEP + "\n")
    jobs = read_manifest(tmp_path / "m.jsonl")
    assert jobs[0].status == "pending"
    assert jobs[1].status == "failed" and "m.jsonl line 2: JSON nested deeper than" in jobs[1].reason


def test_json_loader_depth_and_errors():
    assert jsonio.loads("[" * 64 + "]" * 64, "x", InputError) is not None
    with pytest.raises(InputError, match="x: JSON nested deeper than 64"):
        jsonio.loads("[" * 65 + "]" * 65, "x", InputError)  # parses, but deeper than any v2m document
    with pytest.raises(InputError, match=r"x: not valid JSON \(Expecting value at line 1 column 2\)"):
        jsonio.loads("[", "x", InputError)
    with pytest.raises(InputError, match="x: not UTF-8"):
        jsonio.loads(b"\xff", "x", InputError)
