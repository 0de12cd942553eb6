"""FSDP2 for `v2m train finetune --fsdp`: the DiT, its EMA and the optimizer state sharded over the processes.

`torch.distributed.fsdp.fully_shard` (FSDP2, per-parameter DTensor sharding) on the whole DiT,
for the trained model and its EMA alike, so the EMA update (`lerp_`) runs shard by shard. One
group, not one per block: both DiTs call block methods outside the blocks' forward (the hoisted
time modulations and text keys/values), which a per-block group would not have gathered. So the
weights are gathered whole for a forward (as ZeRO-2), while the optimizer state, the gradients
and the EMA stay sharded. Checkpoints stay the unsharded format of a one-process
run (`torch.distributed.checkpoint.state_dict`, full state dicts on the CPU): a run sharded over N
processes resumes on any number, with or without FSDP.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["shard", "FullState", "Snapshot"]


def shard(*dits: nn.Module) -> None:
    """fully_shard each DiT as one group (see the module docstring)."""
    from torch.distributed.fsdp import fully_shard

    for dit in dits:
        fully_shard(dit)


def _options(cpu_offload: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


class FullState:
    """The full (unsharded, CPU) state dict of a sharded module, or of its optimizer with `opt`:
    `state_dict()` and `load_state_dict()` as `train.common`'s checkpoints call them (collectives:
    every process calls them)."""

    def __init__(self, module: nn.Module, opt: torch.optim.Optimizer | None = None):
        self.module, self.opt = module, opt

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        if self.opt is None:
            return get_model_state_dict(self.module, options=_options())
        return get_optimizer_state_dict(self.module, self.opt, options=_options())

    def load_state_dict(self, sd: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        if self.opt is None:
            set_model_state_dict(self.module, sd, options=_options(False))
        else:
            set_optimizer_state_dict(self.module, self.opt, sd, options=_options(False))


class Snapshot:
    """A state dict taken already (by every process), for rank 0 to save."""

    def __init__(self, sd: dict):
        self.sd = sd

    def state_dict(self) -> dict:
        return self.sd
