"""`v2m serve` and `v2m generate ... --ray`: the command-line side of v2m.serve.

    v2m serve --model BUNDLE [--backend ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--ray [ADDRESS]]
    v2m generate videos/ -o out/ --model BUNDLE --ray [ADDRESS] [--ray-actors N]

Importing this module is cheap (argparse only): fastapi, uvicorn and ray are imported by the
commands, with one clear line if the extra is missing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket

from v2m.core.errors import BackendUnavailable, InputError

from .common import add_runtime_args, load_pipeline, pipeline_options
from .creator import prompt_model_args, prompt_models_of

log = logging.getLogger("v2m.serve")


def require_extra(extra: str, *modules: str) -> None:
    """One line naming the extra to install when a module of it is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"this needs {', '.join(missing)}: pip install 'v2m-runtime[{extra}]'")


def serve_config(args):
    from v2m.serve.config import API_KEY_ENV, ServeConfig

    return ServeConfig(
        host=args.host, port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue, timeout_s=args.timeout,
        max_uploads=args.max_uploads, upload_timeout_s=args.upload_timeout, max_duration_s=args.max_duration,
        max_upload_mb=args.max_upload_mb, max_prompt_chars=args.max_prompt_chars,
        max_candidates=args.max_candidates, allow_dir=args.allow_dir,
        tmp_dir=args.tmp_dir, shutdown_grace_s=args.shutdown_grace, warmup=not args.no_warmup,
        prompt_models=prompt_models_of(args),  # every folder checked before the model loads
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound and listening before the model loads: a port in use is one line (exit 2),
    and `--port 0` learns its port here (uvicorn serves on this socket)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)  # as uvicorn would
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # listening from here on: a client that connects once the URL is printed waits in the
        # backlog until uvicorn serves (it listened only when the server started: refused before)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host, pick another "
                         "--port or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def json_400_protocol():
    """uvicorn's HTTP protocol whose parser errors (a request it cannot parse, answered before the
    app sees it) are v2m's one JSON line instead of plain text."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Protocol(AutoHTTPProtocol):  # h11 and httptools both answer parse errors here
        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": f"malformed HTTP request ({msg.rstrip('.')})", "status": 400}).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return Protocol


def cmd_serve(args) -> int:
    from v2m.core.bundle import load_config
    from v2m.runtime.demo import resolve_model

    require_extra("serve", "fastapi", "uvicorn", "python_multipart", "prometheus_client")
    config = serve_config(args)
    args.model = str(resolve_model(args.model))  # `demo`: the installed demo bundle, as every command
    load_config(args.model)  # a missing or broken bundle: one line now, before listening
    if args.ray is not None:
        require_extra("ray", "ray")
        from v2m.serve.ray_app import run_ray_serve

        return run_ray_serve(config, pipeline_options(args), address=args.ray or None, replicas=args.replicas,
                             replica_cpus=args.replica_cpus)
    sock = bind(config.host, config.port)
    import uvicorn

    from v2m.serve.app import create_app
    from v2m.serve.engine import Engine

    failure: list[BaseException] = []

    def load():
        eng = Engine(load_pipeline(args), config)
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
        lifespan="on", http=json_400_protocol(),
    ))
    if config.host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        log.warning("listening on %s without an API key: anyone who can reach it can use it", config.host)
    port = sock.getsockname()[1]  # the bound one (--port 0 picks a free port)
    host = f"[{config.host}]" if ":" in config.host else config.host
    print(f"v2m serve: http://{host}:{port} (docs at /docs; ready when /readyz says so)", flush=True)
    # uvicorn re-raises the signal it shut down on: after a graceful SIGTERM, exit 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets=[sock])
    if failure:
        e = failure[0]
        raise e if isinstance(e, Exception) else RuntimeError(str(e))
    return 0


def register(sub) -> None:
    """Add `serve` to the CLI's subparsers."""
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
    s.add_argument("--max-queue", type=int, default=32,
                   help="requests whose body has arrived (queued or running) at once; more get 503 (default 32)")
    s.add_argument("--max-uploads", type=int, default=64,
                   help="requests whose body is still arriving at once; more get 503 (default 64)")
    s.add_argument("--upload-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="longest a request body may take to arrive; 408 past it (default 60)")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per request after its upload; 504 past it")
    s.add_argument("--max-duration", type=float, default=600.0, metavar="SECONDS",
                   help="longest video, from its header before decoding and from its frames' times while "
                        "decoding; 413 past it; also the longest `duration` (music without a video), 422 past it; "
                        "0: no limit (default 600)")
    s.add_argument("--max-upload-mb", type=float, default=200.0, help="largest request body; 413 past it (default 200)")
    s.add_argument("--max-prompt-chars", type=int, default=2000, help="longest prompt; 422 past it (default 2000)")
    prompt_model_args(s.add_argument_group("models of prompt=auto (local folders; see `v2m prompt`)"))
    s.add_argument("--max-candidates", type=int, default=8, metavar="N",
                   help="most candidates one request may ask for (form field candidates), at most 64; 422 past it "
                        "(default 8)")
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
    """--ray-actors and --ray-cpus by the CLI's rules (`cli_support.CHECKS`; the CLI ran them already)."""
    from .support import CHECKS, flag

    for dest in ("ray_actors", "ray_cpus"):
        value = getattr(args, dest, None)
        problem = None if value is None else CHECKS[dest](value)
        if problem:
            raise InputError(f"{flag(dest)}: {problem}")
