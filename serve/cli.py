"""`v2m serve` and `v2m generate ... --ray`: the command-line side of v2m.serve.

    v2m serve --model BUNDLE [--backend ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--ray [ADDRESS]]
    v2m generate videos/ -o out/ --model BUNDLE --ray [ADDRESS] [--ray-actors N]

Importing this module is cheap (argparse only): fastapi, uvicorn and ray are imported by the
commands, with one clear line if the extra is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal

from v2m.runtime.errors import BackendUnavailable, InputError

log = logging.getLogger("v2m.serve")


def require(extra: str, *modules: str) -> None:
    """One line naming the extra to install when a module of it is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"this needs {', '.join(missing)}: pip install 'v2m-runtime[{extra}]'")


def serve_config(args):
    from .config import API_KEY_ENV, ServeConfig

    return ServeConfig(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
        max_upload_mb=args.max_upload_mb, max_prompt_chars=args.max_prompt_chars, allow_dir=args.allow_dir,
        tmp_dir=args.tmp_dir, shutdown_grace_s=args.shutdown_grace, warmup=not args.no_warmup,
    )


def pipeline_options(args) -> dict:
    """The runtime options of `_add_runtime_args`, as plain data (sent to Ray workers)."""
    keys = ("model", "backend", "device", "precision", "fast", "compile", "kernels", "vae_precision", "engine_cache", "threads")
    return {k: getattr(args, k, None) for k in keys}


def load_pipeline(options: dict):
    """`v2m.runtime.cli._load_pipeline` from `pipeline_options` data."""
    from v2m.runtime.cli import _load_pipeline

    return _load_pipeline(argparse.Namespace(**options))


def cmd_serve(args) -> int:
    from v2m.runtime.bundle import load_config

    require("serve", "fastapi", "uvicorn", "python_multipart", "prometheus_client")
    config = serve_config(args)
    load_config(args.model)  # a missing or broken bundle: one line now, before listening
    if args.ray is not None:
        require("ray", "ray")
        from .ray_app import run_ray_serve

        return run_ray_serve(config, pipeline_options(args), address=args.ray or None, replicas=args.replicas,
                             replica_cpus=args.replica_cpus)
    import uvicorn

    from .app import create_app
    from .engine import Engine

    failure: list[BaseException] = []

    def load():
        eng = Engine(load_pipeline(pipeline_options(args)), config)
        eng.start()
        return eng

    def on_load_error(e: BaseException) -> None:
        failure.append(e)
        server.should_exit = True

    app = create_app(config, load=load, on_load_error=on_load_error)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # SIGTERM/SIGINT: refuse new requests, finish in-flight ones
            app.state.v2m.draining = True
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning" if args.quiet else "info",
        timeout_graceful_shutdown=int(round(config.shutdown_grace_s)), access_log=not args.quiet,
        lifespan="on",
    ))
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning("listening on %s without an API key: anyone who can reach it can use it", config.host)
    print(f"v2m serve: http://{config.host}:{config.port} (docs at /docs; ready when /readyz says so)", flush=True)
    # uvicorn re-raises the signal it shut down on: after a graceful SIGTERM, exit 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    if failure:
        e = failure[0]
        raise e if isinstance(e, Exception) else RuntimeError(str(e))
    return 0


def add_serve_parser(sub, add_runtime_args) -> None:
    """Register `serve` on the CLI's subparsers (`add_runtime_args`: the CLI's --model/--backend/...)."""
    s = sub.add_parser("serve", help="HTTP service: POST /v1/generate, /v1/curve, /metrics (pip install 'v2m-runtime[serve]')",
                       description="Serve generation over HTTP: the model loaded once, concurrent requests batched.",
                       examples=["v2m serve --model tiny-bundle",
                                 "v2m serve --model full-onnx --backend onnxruntime --host 0.0.0.0 --api-key $KEY",
                                 "v2m serve --model tiny-bundle --ray"])
    add_runtime_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics (or set V2M_API_KEY) (default: none, "
                        "no auth)")
    s.add_argument("--max-batch", type=int, default=None, help="most requests sampled together (default: the backend's, else 8)")
    s.add_argument("--batch-wait-ms", type=float, default=250.0,
                   help="longest a ready request waits for compatible ones while others are arriving (default 250)")
    s.add_argument("--max-queue", type=int, default=32, help="requests admitted at once; more get 503 (default 32)")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per request after its upload; 504 past it")
    s.add_argument("--max-upload-mb", type=float, default=200.0, help="largest request body; 413 past it (default 200)")
    s.add_argument("--max-prompt-chars", type=int, default=2000, help="longest prompt; 422 past it (default 2000)")
    s.add_argument("--allow-dir", default=None, metavar="DIR",
                   help="let requests name a file under DIR (video_path) instead of uploading it (default: never)")
    s.add_argument("--tmp-dir", default=None, metavar="DIR", help="where per-request temporary folders go (default: the system's temporary directory)")
    s.add_argument("--shutdown-grace", type=float, default=30.0, help="on SIGTERM, seconds in-flight requests may take")
    s.add_argument("--no-warmup", action="store_true", help="skip the warm-up generation before ready")
    s.add_argument("--quiet", "-q", action="store_true", help="no access log")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run as a Ray Serve application (one replica per GPU or CPU slot); ADDRESS of a running "
                        "cluster, or none for a local Ray instance (pip install 'v2m-runtime[ray]') (default: off, "
                        "one local process)")
    s.add_argument("--replicas", type=int, default=None, help="--ray: most replicas (default: one per GPU, else per CPU slot)")
    s.add_argument("--replica-cpus", type=float, default=1.0, help="--ray without GPUs: CPUs per replica (default 1)")
    s.set_defaults(func=cmd_serve)


def add_ray_args(g) -> None:
    """`--ray [ADDRESS]` and friends on `v2m generate` (batch mode on a Ray cluster)."""
    g.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="batch mode on Ray Data: one pipeline per actor; ADDRESS of a running cluster, or none for "
                        "a local Ray instance (pip install 'v2m-runtime[ray]'); inputs and -o on a shared filesystem "
                        "(default: off, the local batch)")
    g.add_argument("--ray-actors", type=int, default=None, help="--ray: actors (default: one per GPU, else per --ray-cpus)")
    g.add_argument("--ray-cpus", type=float, default=None,
                   help="--ray: CPUs per actor (default 1 with GPUs, else 2); on CPU the actor's threads, which "
                        "must equal a local run's for bit-identical outputs")


def check_ray_args(args) -> None:
    if args.ray_actors is not None and args.ray_actors < 1:
        raise InputError("--ray-actors must be >= 1")
    if args.ray_cpus is not None and not args.ray_cpus > 0:
        raise InputError("--ray-cpus must be > 0")
