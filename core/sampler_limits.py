"""The sampler's limits and names, as data: the bundle config's sampler section, the export
contracts' profiles and the runtime's `SamplerOptions` all check against these."""

from __future__ import annotations

__all__ = ["SOLVERS", "OBJECTIVE_SOLVERS", "MAX_STEPS", "SEED_LIMIT", "MAX_GUIDANCE", "MAX_SHIFT"]

# Rectified-flow solvers of v2m's own DiT (t: 0 noise -> 1 data) and the sigma-space solvers of
# Stable Audio Open models (`sigma_table`): which fit a bundle is `solvers_for(objective)`.
SOLVERS = ("euler", "heun", "dpmpp-2m", "dpmpp-2m-sde", "pingpong")
OBJECTIVE_SOLVERS = {
    "v2m": ("euler", "heun"),  # v2m's rectified flow in t
    "v": ("dpmpp-2m", "dpmpp-2m-sde"),  # v-diffusion (SAO 1.0)
    "rf_denoiser": ("pingpong", "euler"),  # rectified flow in sigma (SAO Small)
    "rectified_flow": ("euler", "pingpong"),
}
MAX_STEPS = 10000
SEED_LIMIT = 2**63  # seeds are in [0, 2^63): `request.check_seed` is the edges' check
# Guidance weights (cfg_scale, curve_guidance) in [0, MAX_GUIDANCE]: published models use 1 to 15;
# past ~100 the combined prediction overflows fp16 and the audio is a clipped square wave.
MAX_GUIDANCE = 100.0
# SD3's timestep shift S in [1 / MAX_SHIFT, MAX_SHIFT]: SD3 uses 3; beyond 100 every step but the
# first lands at one end of the grid (and 1e-308 underflows the grid to NaN).
MAX_SHIFT = 100.0
