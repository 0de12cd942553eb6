"""What differs per model family, in one place: one registry entry per family.

A bundle's `family` ("v2m": V2M-Zero's own DiT; "sao": a Stable Audio Open model) picks an
entry; the runtime, the exporter and the model loaders ask it instead of branching on the name:

```python
from v2m import families
fam = families.of(cfg)               # the entry of this bundle's family
fam.sampling_length(cfg, length)     # what the sampler runs at (SAO: its fixed length)
fam.contracts(cfg)                   # the graphs it exports
```

Layer: above `v2m.core`, below models, kernels, export and the runtime (it imports only `core`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from v2m.core.bundle import BundleConfig, has_encoder_weights
from v2m.core.contracts import CONTRACTS, ExportContract
from v2m.core.errors import BundleError

from . import sao as _sao

__all__ = ["Family", "FAMILIES", "of", "contracts_for", "graph_names"]


@dataclass(frozen=True)
class Family:
    """One model family's differences, as data and small pure functions of the bundle config.

    Args:
        name: the config's `family` value.
        kind: how messages name a model of it (given the config).
        components: weight components besides the text encoder, in save order.
        builders: component -> "module:Class:ConfigClass" of its PyTorch module (`v2m.models` resolves it).
        fp32_graphs: graphs exported in fp32 in every precision set (they run once a generation).
        contracts: the graphs a bundle of it exports.
        sigmas: the sampler's noise schedule (None: v2m's rectified-flow time grid).
        objective: the sampler's model convention (`v2m.runtime.sampler`).
        sampling_length: latent frames a generation of L frames is sampled at.
        seconds: the seconds values its conditioner takes per video (None: no conditioner).
    """

    name: str
    kind: Callable[[BundleConfig], str]
    components: Callable[[BundleConfig], tuple[str, ...]]
    builders: dict[str, str]
    fp32_graphs: tuple[str, ...]
    contracts: Callable[[BundleConfig], dict[str, ExportContract]]
    sigmas: Callable[[BundleConfig], Callable[[int], np.ndarray] | None]
    objective: Callable[[BundleConfig], str]
    sampling_length: Callable[[BundleConfig, int], int]
    seconds: Callable[[BundleConfig, Any], np.ndarray | None]


def _sao_seconds(cfg: BundleConfig, totals) -> np.ndarray:
    names = cfg.sao_config.seconds_names
    totals = np.atleast_1d(np.asarray(totals, dtype=np.float64))
    return np.stack([_sao.seconds_values(names, float(t)) for t in totals])  # (B, K)


V2M = Family(
    name="v2m",
    kind=lambda cfg: "V2M-Zero rectified-flow",
    components=lambda cfg: ("encoder", "vae", "dit"),
    builders={"dit": "v2m.models.dit:DiT:DiTConfig"},
    fp32_graphs=(),
    contracts=lambda cfg: dict(CONTRACTS),
    sigmas=lambda cfg: None,
    objective=lambda cfg: "v2m",
    sampling_length=lambda cfg, length: length,
    seconds=lambda cfg, totals: None,
)

SAO = Family(
    name="sao",
    kind=lambda cfg: f"Stable Audio Open, {cfg.sao_config.objective!r} objective",
    components=lambda cfg: ("encoder", "vae", "dit", "cond", "text"),
    builders={"dit": "v2m.models.sao_dit:SAODiT:SAODiTConfig",
              "cond": "v2m.models.sao_cond:SAOConditioner:SAOCondConfig"},
    fp32_graphs=_sao.FP32_GRAPHS,
    contracts=_sao.sao_contracts,
    sigmas=lambda cfg: (lambda n, sao=cfg.sao_config: _sao.sigma_schedule(sao, n)),
    objective=lambda cfg: cfg.sao_config.objective,
    sampling_length=lambda cfg, length: max(length, cfg.sao_config.latent_frames),
    seconds=_sao_seconds,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (V2M, SAO)}


def of(cfg: BundleConfig) -> Family:
    """The registry entry of a bundle's family."""
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise BundleError(f"unknown model family {cfg.family!r}; this v2m knows {', '.join(FAMILIES)}") from None


def contracts_for(cfg: BundleConfig) -> dict[str, ExportContract]:
    """The graphs a bundle exports (its family's); a bundle whose frame encoder has no weights
    (or none at all) exports no encoder graph."""
    out = of(cfg).contracts(cfg)
    if not has_encoder_weights(cfg.encoder):
        out.pop("encoder", None)
    return out


def graph_names(cfg: BundleConfig) -> tuple[str, ...]:
    return tuple(contracts_for(cfg))
