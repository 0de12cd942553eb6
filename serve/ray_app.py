"""The same HTTP service as a Ray Serve application: one replica per GPU (or per CPU slot).

    serve run v2m.serve.ray_app:app model=BUNDLE [backend=torch] [device=cuda] [max_batch=8] ...
    V2M_MODEL=BUNDLE serve run v2m.serve.ray_app:app
    v2m serve --model BUNDLE --ray [ADDRESS]

Each replica builds the app of `v2m.serve.app` over its own `Engine` (one loaded pipeline,
one device thread). The only difference from the local server is the batching policy:
`@serve.batch` collects requests (up to the engine's `max_batch`, within `batch_wait_ms`),
and `Engine.run_groups` splits them into compatible groups for the same
`sample_and_decode`. Ray Serve's autoscaler adds replicas up to one per GPU (or CPU slot)
when each holds more than `max_batch` requests.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from ray import serve

from .app import create_app
from .config import ServeConfig
from .engine import Engine
from .options import load_pipeline

__all__ = ["V2MDeployment", "app", "build_app", "run_ray_serve"]

log = logging.getLogger("v2m.serve")

_REPLICA_APP: dict[str, Any] = {}  # the ASGI app built in this replica's constructor


def _replica_asgi_app():
    """Ray Serve's ingress builder: called in the replica after the constructor below."""
    return _REPLICA_APP["app"]


@serve.deployment(name="v2m", max_ongoing_requests=32, health_check_period_s=10)
@serve.ingress(_replica_asgi_app)
class V2MDeployment:
    """A replica: a loaded, warmed-up engine behind the service's FastAPI app."""

    def __init__(self, config: ServeConfig, pipeline_options: dict):
        self.engine = Engine(load_pipeline(pipeline_options), config)
        self.engine.start()
        self.engine.batch_fn = self._batch
        self._batched.set_max_batch_size(self.engine.max_batch)
        self._batched.set_batch_wait_timeout_s(config.batch_wait_ms / 1e3)
        # Ray pickles this class by value (with a copy of this module's globals); the builder
        # reads the real module's dict, so write there
        from v2m.serve import ray_app

        ray_app._REPLICA_APP["app"] = create_app(config, engine=self.engine)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.25)
    async def _batched(self, items: list) -> list:
        return [("ok", r) if not isinstance(r, BaseException) else ("error", r) for r in await self.engine.run_groups(items)]

    async def _batch(self, item):
        kind, value = await self._batched(item)
        if kind == "error":
            raise value
        return value

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

    def check_health(self) -> None:
        if not self.engine.scheduler.alive:
            raise RuntimeError("the device thread has stopped")


def _cluster_slots(replica_cpus: float) -> tuple[int, dict[str, float]]:
    """(most replicas, one replica's resources): one per GPU when the cluster has GPUs, else per CPU slot."""
    import ray

    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    return max(1, int(res.get("CPU", 1) // replica_cpus)), {"num_cpus": replica_cpus}


def build_app(args: dict[str, str] | None = None):
    """The application for `serve run v2m.serve.ray_app:app key=value ...` (or V2M_* variables).

    Keys: model (or V2M_MODEL), backend, device, precision; ServeConfig's fields (max_batch,
    batch_wait_ms, max_queue, timeout_s, max_upload_mb, api_key or V2M_API_KEY, ...);
    replicas, replica_cpus.
    """
    args = dict(args or {})
    model = args.pop("model", None) or os.environ.get("V2M_MODEL")
    if not model:
        raise ValueError("give the bundle: serve run v2m.serve.ray_app:app model=BUNDLE (or set V2M_MODEL)")
    options = {"model": model, "backend": args.pop("backend", "auto"), "device": args.pop("device", "auto"),
               "precision": args.pop("precision", None)}
    replicas = int(args.pop("replicas", 0)) or None
    replica_cpus = float(args.pop("replica_cpus", 1))
    models = {k: args.pop(k) for k in ("whisper", "captioner", "lm", "frames") if k in args}
    types = {f: t for f, t in ServeConfig.__annotations__.items() if f != "prompt_models"}
    kwargs: dict[str, Any] = {}
    if models:  # prompt=auto's model stages: whisper=DIR captioner=DIR lm=DIR frames=K
        from v2m.runtime.describe_models import PromptModels

        kwargs["prompt_models"] = PromptModels(**{k: v for k, v in models.items() if k != "frames"},
                                               frames=int(models.get("frames", 8)))
    for k, v in args.items():
        if k not in types:
            raise ValueError(f"unknown option {k!r}; expected model, backend, device, precision, replicas, "
                             f"replica_cpus or one of {sorted(types)}")
        t = str(types[k])
        kwargs[k] = (int(v) if "int" in t else float(v) if "float" in t else v.lower() in ("1", "true") if "bool" in t else v)
    kwargs.setdefault("api_key", os.environ.get("V2M_API_KEY") or None)
    return deployment_for(ServeConfig(**kwargs), options, replicas, replica_cpus)


app = build_app  # `serve run v2m.serve.ray_app:app model=...`: Ray calls builders with the key=value args


def deployment_for(config: ServeConfig, options: dict, replicas: int | None = None, replica_cpus: float = 1.0):
    """The bound deployment: autoscaled from one replica up to one per GPU (or CPU slot)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    most, resources = _cluster_slots(replica_cpus)
    most = min(most, replicas) if replicas else most
    max_batch = config.max_batch or 8
    return V2MDeployment.options(
        ray_actor_options=resources,
        max_ongoing_requests=config.max_queue,
        autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": most,
                            "target_ongoing_requests": max_batch},
    ).bind(config, options)


def run_ray_serve(config: ServeConfig, options: dict, address: str | None = None, replicas: int | None = None,
                  replica_cpus: float = 1.0) -> int:
    """`v2m serve --ray`: start Serve on a cluster (or a local Ray), run the app until SIGTERM/Ctrl-C."""
    import ray

    ray.init(address=address or None, ignore_reinit_error=True)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(deployment_for(config, options, replicas, replica_cpus), name="v2m", route_prefix="/")
    print(f"v2m serve (Ray Serve): http://{config.host}:{config.port} (docs at /docs)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    return 0
