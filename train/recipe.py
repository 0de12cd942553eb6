"""The demo recipe: one command, one seed, the shipped bundle.

    v2m train demo --seed 0 --work runs/demo -o runtime/demo_bundle

runs, each stage resumable in `--work`:

1. the autoencoder on the recipe's corpus (synthetic by default; `corpus="scores"` or "mix") (`v2m.train.autoencoder`, preset demo);
2. the DiT on the corpus's latents and music curves (`v2m.train.dit`, preset demo);
3. the bundle: EMA weights in fp16, the weight-free `cut` frame encoder, the
   recipe's sampler defaults; written to a temporary directory beside `-o` and
   renamed, so `-o` is never half-written;
4. an alignment check on held-out cut videos (with and without the curve).

`report.json` in `--work` records each stage's wall and CPU time (this process and
its workers; for a training stage resumed from a checkpoint, the totals over every
invocation, and this invocation's apart), the thread count, the machine's load
average and the check's figures.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from v2m.core.bundle import SamplerConfig
from v2m.core.errors import OutputError

from . import common
from .autoencoder import AE_PRESETS, AE_TRAIN_PRESETS, AETrainConfig, train_autoencoder
from .data import open_source
from .dit import DIT_TRAIN_PRESETS, DiTTrainConfig, train_dit

__all__ = ["DemoRecipe", "RECIPES", "run_recipe"]

log = logging.getLogger("v2m.train.recipe")


@dataclass
class DemoRecipe:
    clips: int = 800  # clips the DiT trains on
    clip_seconds: float = 12.0
    # the training corpus (`v2m.train.data.CORPORA`): "synth" (drums, bass, pads), "scores"
    # (corpus scores played by General MIDI instruments in FluidSynth) or "mix" (both, interleaved)
    corpus: str = "synth"
    autoencoder: str = "demo"  # AE_PRESETS / AE_TRAIN_PRESETS key
    ae_train: AETrainConfig = field(default_factory=lambda: AE_TRAIN_PRESETS["demo"])
    dit_train: DiTTrainConfig = field(default_factory=lambda: DIT_TRAIN_PRESETS["demo"])
    encoder: str = "cut"
    # Sampler defaults written into the bundle. Curve guidance 1 was chosen on validation cut
    # videos (bench_alignment --seed 30000: cut hits 0.77 -> 0.87, flat from 0.5 to 2) and
    # then measured on the held-out ones (--seed 20000; docs/demo-model.md).
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=32, cfg_scale=2.0, curve_guidance=1.0))
    dtype: str = "fp16"  # of the shipped weights
    # fp32 ONNX graphs exported into the bundle (checked against PyTorch): `--backend auto`
    # runs them with ONNX Runtime on a CPU (no torch import, 2x faster a step)
    export_onnx: bool = True
    check_videos: int = 6

    def to_dict(self) -> dict:
        return asdict(self)


RECIPES: dict[str, DemoRecipe] = {
    "demo": DemoRecipe(),
    # CI and tests: every stage for real, in seconds.
    "tiny": DemoRecipe(clips=6, clip_seconds=2.0, autoencoder="tiny", ae_train=AE_TRAIN_PRESETS["tiny"],
                       dit_train=DIT_TRAIN_PRESETS["tiny"], sampler=SamplerConfig(steps=4, cfg_scale=2.0),
                       check_videos=1),
}


def run_recipe(work: str | Path, out: str | Path, recipe: DemoRecipe, seed: int = 0, threads: int | None = None,
               progress: bool = True, overwrite: bool = False, midi_folder: str | None = None) -> dict:
    """Run the recipe; returns (and writes to `work/report.json`) the stage times and check figures.

    `midi_folder`: the user's MIDI files played instead of the music21 corpus (corpus scores or mix).
    """
    from .dit import write_bundle

    work, out = Path(work), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"{out} exists and is not empty; pass --overwrite to replace it")
    work.mkdir(parents=True, exist_ok=True)
    n_threads = common.set_threads(threads)
    report: dict = {"seed": seed, "recipe": recipe.to_dict(), "threads": n_threads, "stages": {},
                    "load_avg_start": os.getloadavg(), "cpu_count": os.cpu_count()}

    def stage(name, fn, run_dir: Path | None = None):
        """Run a stage; its times: this invocation's, and for a training stage (`run_dir`) the
        totals of timing.json, which add up every invocation of a resumed run."""
        t0, c0 = time.perf_counter(), common.cpu_seconds()
        result = fn()
        times = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(common.cpu_seconds() - c0, 1)}
        if run_dir is not None:
            total = json.loads((run_dir / "timing.json").read_text())
            times = {"wall_s": total["wall_s"], "cpu_s": total["cpu_s"], "this_invocation": times}
        report["stages"][name] = times
        log.info("stage %s: %s", name, report["stages"][name])
        return result

    source = open_source(recipe.corpus, seed, recipe.clips, recipe.clip_seconds, midi_folder=midi_folder)
    ae_dir = work / "autoencoder"
    stage("autoencoder", lambda: train_autoencoder(ae_dir, source, AE_PRESETS[recipe.autoencoder], recipe.ae_train,
                                                   seed=seed, threads=n_threads, progress=progress), ae_dir)
    dit_dir = work / "dit"
    stage("dit", lambda: train_dit(dit_dir, source, ae_dir, recipe.dit_train, seed=seed, threads=n_threads,
                                   encoder=recipe.encoder, progress=progress), dit_dir)

    def bundle():
        from .dit import load_trained

        model, scale = load_trained(dit_dir)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write_bundle(tmp, model, model.dit.cfg, ae_dir, scale, recipe.dit_train, recipe.encoder, seed,
                         dtype={"fp16": torch.float16, "fp32": torch.float32}[recipe.dtype], preset="demo",
                         sampler=recipe.sampler)
            if recipe.export_onnx:
                from v2m.export.exporter import export_bundle

                export_bundle(tmp, precisions=("fp32",))  # in place; a graph off PyTorch fails the stage
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    stage("bundle", bundle)
    if recipe.check_videos:
        from v2m.eval.alignment import alignment_check

        report["check"] = stage("check", lambda: alignment_check(out, work / "check", count=recipe.check_videos,
                                                                 seed=10_000 + seed))
    report["total"] = {k: round(sum(s[k] for s in report["stages"].values()), 1) for k in ("wall_s", "cpu_s")}
    report["load_avg_end"] = os.getloadavg()
    report["bundle_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
