"""`v2m train ...`: the training commands of the CLI (they need torch; `v2m.train` is imported lazily).

    v2m train autoencoder -o runs/ae [--audio my_music/] [--steps 1500] [--seed 0]
    v2m train dit --autoencoder runs/ae -o runs/dit [--audio my_music/] [--steps 4000] [--encoder cut]
    v2m train demo --seed 0 --work runs/demo -o runtime/demo_bundle      # the shipped bundle, one command

Every stage resumes from its last checkpoint when rerun with the same directory
and settings. Progress bars go to stderr (`--quiet` turns them off).
"""

from __future__ import annotations

import logging
import os

from v2m.core.bundle import WEIGHT_FREE
from v2m.core.errors import InputError, require

CORPORA = ("synth", "scores", "mix")  # v2m.train.data.CORPORA (not imported: it would import numpy-heavy train)

log = logging.getLogger("v2m.cli")


def _prepare_torch(threads: int) -> None:
    """Before torch is imported: idle OpenMP threads sleep instead of spinning.

    On a shared CPU a spinning worker burns the cycles its sibling is waiting for:
    measured on the 2-core machine under load, a training step cost 9 s of CPU with
    the default spin policy and 1.6 s with OMP_WAIT_POLICY=PASSIVE, same result.
    An explicit OMP_WAIT_POLICY in the environment is left alone.
    """
    require("torch", what="`v2m train`", extra="train")
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log.info("training with OMP_WAIT_POLICY=PASSIVE, %d threads", threads)


def _source(args, open_source):
    if args.audio and (args.corpus != "synth" or args.midi):
        raise InputError("--audio is your own music; it does not combine with --corpus or --midi")
    return open_source(args.audio or args.corpus, seed=args.seed, count=args.clips, duration_s=args.clip_seconds,
                       midi_folder=args.midi)


def cmd_train_autoencoder(args) -> int:
    _prepare_torch(args.threads)
    from dataclasses import replace

    from v2m.train.autoencoder import AE_PRESETS, AE_TRAIN_PRESETS, train_autoencoder
    from v2m.train.data import open_source

    source = _source(args, open_source)
    tc = AE_TRAIN_PRESETS[args.preset]
    if args.train_steps:
        tc = replace(tc, steps=args.train_steps)
    path = train_autoencoder(args.output, source, AE_PRESETS[args.preset], tc, seed=args.seed, threads=args.threads,
                             progress=not args.quiet)
    print(f"wrote {path} (and {path.parent / 'losses.png'})")
    return 0


def cmd_train_dit(args) -> int:
    _prepare_torch(args.threads)
    from dataclasses import replace

    from v2m.train.data import open_source
    from v2m.train.dit import DIT_TRAIN_PRESETS, train_dit

    source = _source(args, open_source)
    tc = DIT_TRAIN_PRESETS[args.preset]
    if args.train_steps:
        tc = replace(tc, steps=args.train_steps)
    bundle = train_dit(args.output, source, args.autoencoder, tc, seed=args.seed, threads=args.threads,
                       encoder=args.encoder, progress=not args.quiet)
    print(f"wrote bundle {bundle} (losses in {bundle.parent / 'losses.png'})")
    return 0


def cmd_train_demo(args) -> int:
    _prepare_torch(args.threads)
    from dataclasses import replace

    from v2m.train.paper_recipe import PAPER_RECIPES, run_paper_recipe
    from v2m.train.recipe import RECIPES, run_recipe

    paper = args.recipe in PAPER_RECIPES
    recipe = PAPER_RECIPES[args.recipe] if paper else RECIPES[args.recipe]
    if args.corpus is not None:
        recipe = replace(recipe, corpus=args.corpus)
    if args.midi and recipe.corpus == "synth":
        raise InputError("--midi plays through the score corpus: add --corpus scores or --corpus mix")
    if args.text_encoder is not None and (not paper or recipe.backbone != "v2m"):
        raise InputError("--text-encoder is the paper recipe's: add --recipe paper"
                         + (" (paper-sao's text encoder is a T5 of its own)" if paper else ""))
    run = run_paper_recipe if paper else run_recipe
    extra = {"text_source": args.text_encoder, "stop_after": args.stop_after} if paper else {}
    report = run(args.work, args.output, recipe, seed=args.seed, threads=args.threads, progress=not args.quiet,
                 overwrite=args.overwrite, midi_folder=args.midi, **extra)
    for name, s in report["stages"].items():
        print(f"{name:<12} {s['wall_s'] / 60:7.1f} min wall {s['cpu_s'] / 60:7.1f} min CPU")
    t = report.get("total") or {k: round(sum(s[k] for s in report["stages"].values()), 1) for k in ("wall_s", "cpu_s")}
    print(f"{'total':<12} {t['wall_s'] / 60:7.1f} min wall {t['cpu_s'] / 60:7.1f} min CPU "
          f"({report['threads']} threads; load average {report['load_avg_start'][0]:.1f} at the start)")
    for c in (report[k] for k in ("check", "check-sao") if k in report):
        for k in ("curve", "no_curve"):
            print(f"check {k:<9} corr {c[k]['corr']:.3f}  cut hits {c[k]['cut_hits']:.3f}  "
                  f"flatness {c[k]['flatness']:.3f}  ({c['videos']} held-out cut videos)")
    if "bundle_bytes" in report:
        print(f"wrote {args.output} ({report['bundle_bytes'] / 1e6:.1f} MB); report in {args.work}/report.json")
    else:  # --stop-after
        print(f"stopped after {args.stop_after}; run the same command without --stop-after to go on "
              f"(report in {args.work}/report.json)")
    return 0


def cmd_train_finetune(args) -> int:
    _prepare_torch(args.threads)
    from v2m.core.bundle import load_config
    from v2m.runtime.demo import resolve_model
    from v2m.train.finetune import FinetuneConfig, finetune

    base = resolve_model(args.base)
    load_config(base)  # a bad bundle is one line before any work
    defaults = FinetuneConfig()
    tc = FinetuneConfig(steps=args.train_steps or defaults.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                        lr=args.lr, warmup=min(defaults.warmup, max(1, (args.train_steps or defaults.steps) // 10)),
                        lora_rank=args.lora_rank, clip_seconds=args.clip_seconds, clips_per_file=args.clips_per_file,
                        eval_interval=args.eval_interval, checkpoint_interval=args.eval_interval, dtype=args.dtype,
                        curve_encoder=args.curve_encoder, activation_checkpointing=args.activation_checkpointing,
                        fsdp=args.fsdp, eval_generate=args.eval_generate)
    path = finetune(args.output, base, args.audio, tc, seed=args.seed, threads=args.threads, workers=args.workers,
                    cache=args.cache, progress=not args.quiet, device=args.device)
    if path.name == "bundle":
        print(f"wrote bundle {path} (losses in {path.parent / 'losses.png'}, report in {path.parent / 'report.json'})")
    return 0


def _add_finetune_parser(ts) -> None:
    f = ts.add_parser("finetune", help="fine-tune a bundle on your music with music event curves (V2M-Zero)",
                      description="V2M-Zero's zero-pair fine-tune: the bundle's DiT learns to follow the music event "
                                  "curve of the training music (a zero-initialized curve channel is added where the "
                                  "model has none); the result is an ordinary bundle at OUTPUT/bundle. Runs under "
                                  "torchrun for DDP: `torchrun --nproc-per-node N -m v2m.train.finetune` takes the same options.",
                      examples=["v2m train finetune --base sao-small-bundle --audio my_music/ -o runs/ft",
                                "v2m train finetune --base demo-like-bundle --audio my_music/ -o runs/ft --lora-rank 16",
                                "v2m train finetune --base sao-bundle --audio my_music/ -o runs/ft --cache /shared/v2m-cache"])
    f.add_argument("-o", "--output", required=True, help="the run directory (resumes when rerun)")
    f.add_argument("--base", required=True, metavar="BUNDLE", help="the bundle to fine-tune (with a vae_encoder component)")
    f.add_argument("--audio", required=True, metavar="FOLDER",
                   help="audio files (+ optional captions.jsonl / captions.tsv; else tags, else file names)")
    f.add_argument("--steps", dest="train_steps", metavar="N", type=int, default=2000, help="optimizer steps")
    f.add_argument("--batch-size", type=int, default=8, help="the global batch (any number of processes)")
    f.add_argument("--grad-accum", type=int, default=1, help="micro-batches a step")
    f.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (warm-up, then cosine)")
    f.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on attention and MLP projections; 0 = full fine-tune")
    f.add_argument("--clip-seconds", type=float, default=None,
                   help="clip length of a v2m-family base (default: 10; Stable Audio Open: the model's own)")
    f.add_argument("--clips-per-file", type=int, default=4, help="clips at seeded offsets per file")
    f.add_argument("--eval-interval", type=int, default=100, help="steps between validation and checkpoints")
    f.add_argument("--eval-generate", type=int, default=2, metavar="N",
                   help="held-out clips generated at each validation, their curve correlation logged; 0 = off")
    f.add_argument("--cache", default=None, metavar="DIR", help="the prepared-data cache (default: OUTPUT/cache; "
                   "content-keyed, may be shared between runs and nodes)")
    f.add_argument("--workers", type=int, default=2, help="prepare worker processes")
    f.add_argument("--curve-encoder", default="logmel", metavar="ENCODER",
                   help="the music encoder of the training curves, recorded in the bundle: logmel, basic-pitch "
                        "(pip install --no-deps basic-pitch) or a Hugging Face audio-model directory (copied in)")
    f.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="the written bundle's weights")
    f.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA: bf16 autocast; under torchrun "
                   "each process takes its LOCAL_RANK GPU)")
    f.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each transformer block's activations in backward (less memory)")
    f.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the DiT, its EMA and the optimizer state over the processes (FSDP2)")
    f.add_argument("--seed", type=int, default=0, help="seed of the clips and the run, in [0, 2^63)")
    f.add_argument("--threads", type=int, default=2, help="torch threads, >= 1")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    f.set_defaults(func=cmd_train_finetune)


def register(sub) -> None:
    """Register `train {autoencoder,dit,demo}` on the CLI's subparsers."""
    t = sub.add_parser("train", help="train a model on synthetic music or your own (needs torch)",
                       description="Train the autoencoder and the DiT on synthetic music or a folder of yours "
                                   "(audio files + captions); `train demo` is the shipped bundle's recipe.",
                       examples=["v2m train demo --seed 0 --work runs/demo -o runtime/demo_bundle",
                                 "v2m train autoencoder -o runs/ae --audio my_music/",
                                 "v2m train dit --autoencoder runs/ae -o runs/dit --audio my_music/"])
    ts = t.add_subparsers(dest="train_command", required=True)

    def common(p, presets):
        p.add_argument("-o", "--output", required=True, help="the run directory (resumes when rerun)")
        p.add_argument("--audio", default=None, metavar="FOLDER",
                       help="your own music: audio files + captions.jsonl or captions.tsv (default: the synthetic corpus)")
        p.add_argument("--preset", default="demo", choices=presets, help="model and training sizes (default: demo)")
        p.add_argument("--steps", dest="train_steps", metavar="N", type=int, default=None, help="training steps (default: the preset's)")
        p.add_argument("--corpus", default="synth", choices=CORPORA,
                       help="generated training music: synth (drums, bass, pads), scores (music21 scores played by "
                            "General MIDI instruments in FluidSynth), mix (both) (default: synth)")
        p.add_argument("--midi", default=None, metavar="FOLDER",
                       help="with --corpus scores or mix: your MIDI files instead of the music21 corpus (default: none)")
        p.add_argument("--clips", type=int, default=800, help="generated clips, >= 1 (default: 800)")
        p.add_argument("--clip-seconds", type=float, default=12.0, help="clip length in seconds, in (0, 600] (default: 12)")
        p.add_argument("--seed", type=int, default=0, help="seed of the data and the run, in [0, 2^63) (default: 0)")
        p.add_argument("--threads", type=int, default=2, help="torch threads, >= 1 (default: 2)")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    a = ts.add_parser("autoencoder", help="the autoencoder: STFT-conv encoder + Oobleck decoder",
                      examples=["v2m train autoencoder -o runs/ae",
                                "v2m train autoencoder -o runs/ae --audio my_music/ --steps 3000"])
    common(a, ["demo", "tiny"])
    a.set_defaults(func=cmd_train_autoencoder)

    d = ts.add_parser("dit", help="the DiT on music event curves (V2M-Zero, no video needed)",
                      examples=["v2m train dit --autoencoder runs/ae -o runs/dit",
                                "v2m train dit --autoencoder runs/ae -o runs/dit --audio my_music/ --encoder motion"])
    common(d, ["demo", "tiny"])
    d.add_argument("--autoencoder", required=True, metavar="DIR", help="a finished `v2m train autoencoder` run")
    d.add_argument("--encoder", default="cut", choices=WEIGHT_FREE, help="the bundle's frame encoder (default: cut)")
    d.set_defaults(func=cmd_train_dit)

    m = ts.add_parser("demo", help="the shipped demo bundle: autoencoder, DiT, fp16 bundle, alignment check",
                      examples=["v2m train demo --seed 0 --work runs/demo -o runtime/demo_bundle",
                                "v2m train demo --recipe paper --work runs/paper -o paper-bundle"])
    m.add_argument("-o", "--output", required=True, help="the bundle directory (e.g. runtime/demo_bundle)")
    m.add_argument("--work", required=True, help="run directories and report.json (resumable)")
    m.add_argument("--recipe", default="demo", choices=["demo", "tiny", "paper", "paper-tiny", "paper-sao",
                                                        "paper-sao-tiny"],
                   help="demo: the shipped bundle's; paper: the paper's two stages (a text-to-music model, then the "
                        "curve fine-tune; real instruments, a pretrained text encoder); paper-sao: the same stages on "
                        "Stable Audio Open's architecture (shares --work's corpus and autoencoder); tiny, paper-tiny, "
                        "paper-sao-tiny: seconds, for tests (default: demo)")
    m.add_argument("--text-encoder", default=None, metavar="SOURCE",
                   help="with --recipe paper: the sentence text encoder, minilm or a local BERT folder "
                        "(default: minilm)")
    m.add_argument("--stop-after", default=None, choices=["corpus", "autoencoder", "stage1"],
                   help="with --recipe paper: stop after this stage (run the rest by running the command again; default: run every stage)")
    m.add_argument("--corpus", default=None, choices=CORPORA,
                   help="the training corpus (default: the recipe's, synth)")
    m.add_argument("--midi", default=None, metavar="FOLDER",
                   help="with --corpus scores or mix: your MIDI files instead of the music21 corpus (default: none)")
    m.add_argument("--seed", type=int, default=0, help="seed of the data and every stage, in [0, 2^63) (default: 0)")
    m.add_argument("--threads", type=int, default=2, help="torch threads, >= 1 (default: 2)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing bundle at -o")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_train_demo)
    _add_finetune_parser(ts)
