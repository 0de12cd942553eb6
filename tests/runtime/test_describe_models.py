"""The LM prompt stage's real loading code on a tiny random GPT-2 (transformers config, a
word-level tokenizer) saved to a local folder: loaded offline, greedy, deterministic."""

from __future__ import annotations

import json

import pytest

from v2m.core.errors import InputError
from v2m.runtime.describe import VideoTraits, prompt_from_traits

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from tiny_prompt_models import tiny_lm as _tiny_lm  # noqa: E402

TRAITS = VideoTraits(6.0, 2, 20.0, 0.03, 0.5, 0.1, 0.4)


def test_summarize_loads_a_local_model_offline(tmp_path):
    from v2m.runtime.describe_models import summarize

    d = _tiny_lm(tmp_path / "lm", favourite="groove")
    assert summarize(d, TRAITS, max_new_tokens=3) == "groove groove groove"  # greedy, the model's answer
    assert summarize(_tiny_lm(tmp_path / "eos", favourite="[EOS]"), TRAITS) == prompt_from_traits(TRAITS)


def test_not_a_model_folder_is_one_line(tmp_path):
    from v2m.runtime.describe_models import summarize

    with pytest.raises(InputError, match="config.json"):
        summarize(tmp_path, TRAITS)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError):
        summarize(tmp_path, TRAITS)


def test_cli_prompt_llm(tmp_path, monkeypatch, capsys, short_video):
    from v2m.cli.main import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    d = _tiny_lm(tmp_path / "lm", favourite="warm")
    assert main(["prompt", str(short_video.path), "--llm", str(d), "--json"]) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["prompt"].split()[:3] == ["warm"] * 3
    assert main(["prompt", str(short_video.path), "--json"]) == 0  # the describer's words: another cache entry
    assert json.loads(capsys.readouterr().out)["prompt"] != res["prompt"]
