"""Many videos at once: folders, file lists and JSONL manifests, batched through the engine core.

`jobs` collects and names the inputs and keeps the resume sidecars; `run` groups prepared
jobs for the sampler and writes outputs, sidecars and the summary.

```python
from v2m.runtime import Pipeline
from v2m.batch import BatchOptions, collect_inputs, run_batch
pipe = Pipeline.from_pretrained("tiny-bundle")
jobs = collect_inputs(["videos/"], "out/", prompt="warm synth pop", seed=7)
summary = run_batch(pipe, jobs, BatchOptions("out/"))     # writes out/summary.json
```
"""

from __future__ import annotations

from .jobs import (
    FORMATS,
    SIDECAR_SUFFIX,
    SUMMARY_NAME,
    BatchOptions,
    BatchSummary,
    Job,
    assign_outputs,
    check_output_dir,
    collect_inputs,
    model_hash,
    read_manifest,
    show,
)
from .run import Progress, complete, prepare_item, reason_of, run_batch, write_output, write_summary

__all__ = [
    "FORMATS", "SIDECAR_SUFFIX", "SUMMARY_NAME", "BatchOptions", "BatchSummary", "Job", "Progress", "assign_outputs",
    "check_output_dir", "collect_inputs", "complete", "model_hash", "prepare_item", "read_manifest", "reason_of",
    "run_batch", "show", "write_output", "write_summary",
]
