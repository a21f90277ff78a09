"""`emote quantize --precision fp16`: the fp16 step graphs, made the one way the project makes them.

fp16 graphs come from the PyTorch model, not from an ONNX-level float16 pass: the
export traces a half copy of the backbone whose norms (``GroupNorm32``,
``LayerNorm32``), attention softmax and the solver update (``out.float()`` in
``DenoiseStepGraph``) are written in fp32 in the model code, so the policy lives in
one place and the graph holds exactly the casts it needs. An ONNX-level converter
would have to rediscover where the solver update starts and which ops are norms, and
it inserts a cast pair around every op it blocks. So this command (and ``emote
export --precision fp16``, the same code) needs the export extra and the checkpoint
the bundle was exported from (random-weight bundles rebuild theirs from the seed).
"""

from __future__ import annotations

from pathlib import Path

from ..bundle import Bundle
from .install import add_graphs, staged_files, staging


def export_fp16(
    bundle: Bundle, checkpoint: str | Path | None = None, graphs=("denoise_step", "denoise_step_cond"), progress=None
) -> Bundle:
    """Write ``<graph>.fp16.onnx`` for the step graphs of ``bundle`` and record them in its manifest."""
    from ..export.bundle import export_entry
    from ..export.graphs import DenoiseStepGraph
    from ..models.checkpoint import model_for_bundle

    model = model_for_bundle(bundle, checkpoint)
    entries = {}
    with staging(bundle) as folder:
        for name in graphs:
            g = DenoiseStepGraph(model, guided=name == "denoise_step", precision="fp16")
            if progress:
                progress(f"exporting {g.name}")
            entries[g.name] = export_entry(g, folder)
        return add_graphs(bundle, entries, staged_files(folder))
