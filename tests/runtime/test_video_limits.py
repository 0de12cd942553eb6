"""Issue 22, item 4: a 3 KB video whose last frame sits 6 h after the others.

It used to decode and sample for hours (172800 samples at 8 fps, a GB of memory), on the CLI
and on the server's one device thread, and nothing could stop it. Now: `--max-duration`
refuses it from the header before decoding, or from the late frame's time when the header
lies; a `cancel` stops the decode and encode stages at the next frame or batch, and no
decode thread is left behind. Media are generated with PyAV (`synth.make_gap_video`).

Oracles: the exceptions and exit codes, the header's own claim (probe), and bounded counts
of samples yielded (never the clock).
"""

from __future__ import annotations

import json
import threading

import pytest

from v2m.cli.main import main
from v2m.core.errors import Cancelled, VideoTooLong
from v2m.runtime import video

SIX_HOURS = 6 * 3600.0  # the gap videos' last frame (the `gaps` fixture)


def test_the_videos_are_what_they_claim(gaps):
    assert gaps["honest"].stat().st_size < 8192 and gaps["lying"].stat().st_size < 8192
    assert video.probe(gaps["honest"]).duration_s == pytest.approx(SIX_HOURS, abs=0.1)
    assert video.probe(gaps["lying"]).duration_s < 1.0  # the header hides the late frame


def test_refused_from_the_header_before_decoding(gaps):
    with pytest.raises(VideoTooLong, match="lasts 21600.0 s; the limit is 600 s"):
        video.VideoReader(gaps["honest"], max_duration_s=600)


def test_a_lying_header_stops_at_the_late_frame(gaps):
    reader = video.VideoReader(gaps["lying"], max_duration_s=600)
    yielded = 0
    with pytest.raises(VideoTooLong, match="frame at 21600.0 s"):
        for batch in reader.sample(fps=8, size=32, batch_size=16):
            yielded += len(batch)
    assert yielded <= 16  # before the late frame: at most one batch of the first second


@pytest.mark.parametrize("cancel_kind", ["event", "callable"])
def test_cancel_stops_sampling(gaps, cancel_kind):
    event = threading.Event()
    cancel = event if cancel_kind == "event" else event.is_set
    reader = video.VideoReader(gaps["honest"], cancel=cancel)  # no limit: 6 h of samples
    batches = 0
    with pytest.raises(Cancelled):
        for _ in reader.sample(fps=8, size=16, batch_size=32):
            batches += 1
            if batches == 3:
                event.set()
    assert batches == 3


def test_encode_video_cancelled_leaves_no_decode_thread(gaps, tiny_bundle):
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu")
    calls = {"n": 0}

    def cancel() -> bool:  # set after a few checks, from whichever thread asks
        calls["n"] += 1
        return calls["n"] > 40

    with pytest.raises(Cancelled):
        pipe.encode_video(gaps["honest"], cancel=cancel)
    assert not [t for t in threading.enumerate() if t.name == "v2m-decode"]
    with pytest.raises(VideoTooLong):
        pipe.encode_video(gaps["lying"], max_duration_s=600)
    assert not [t for t in threading.enumerate() if t.name == "v2m-decode"]


@pytest.mark.parametrize("which,args,words", [
    ("honest", ["curve"], ["lasts 21600.0 s", "14400"]),  # the default limit, before the model loads
    ("honest", ["curve", "--max-duration", "60"], ["lasts 21600.0 s", "limit is 60 s"]),
    ("lying", ["generate", "-o", "OUT", "--steps", "2"], ["frame at 21600.0 s"]),
])
def test_cli_one_line_exit_2(gaps, tiny_bundle, tmp_path, capsys, which, args, words):
    argv = [a.replace("OUT", str(tmp_path / "o.wav")) for a in args]
    rc = main([argv[0], str(gaps[which]), *argv[1:], "--model", str(tiny_bundle), "--device", "cpu", "-q"
               if argv[0] == "generate" else "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("v2m: error:"), err
    assert all(w in err[0] for w in words), err
    assert not list(tmp_path.iterdir())


def test_max_duration_option_checked(gaps, tiny_bundle, capsys):
    assert main(["curve", str(gaps["honest"]), "--model", str(tiny_bundle), "--max-duration", "-1"]) == 2
    assert "--max-duration" in capsys.readouterr().err
    out = gaps["honest"].parent / "batch"  # batch mode: each too-long video fails alone, with its line
    assert main(["generate", str(gaps["honest"]), str(gaps["lying"]), "-o", str(out), "--model", str(tiny_bundle),
                 "--max-duration", "60", "--steps", "2", "--format", "wav", "-q"]) == 2
    items = json.loads((out / "summary.json").read_text())["items"]
    assert [i["status"] for i in items] == ["failed", "failed"]
    assert "lasts 21600.0 s" in items[0]["reason"] and "frame at 21600.0 s" in items[1]["reason"]
    assert not list(out.glob("*.wav"))
