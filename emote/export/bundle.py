"""`emote export`: PyTorch model -> a verified-shape ONNX bundle with its manifest.

The bundle is written into a temporary folder beside the target and renamed into
place at the end, so an interrupted export or a full disk never leaves a
half-written bundle. Every graph has static shapes (engines and CUDA graphs want
them), opset 18, is cleaned (constant folding, dead nodes, shape inference) and
passes ``onnx.checker`` with full checks before the manifest records its sha256.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from .. import __version__
from .. import bundle as bundle_format
from ..errors import EmoteError
from ..folders import staged_folder
from ..models.emo import EMOModel
from .graphs import Graph, all_graphs

OPSET = 18


def export_graph(graph: Graph, path: Path) -> None:
    """One graph to ONNX: static shapes, opset 18, cleaned, checked."""
    graph.eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    rng = np.random.default_rng(0)
    specs = graph.inputs()
    example = graph.example(rng)
    args = tuple(torch.from_numpy(example[s.name]) for s in specs)
    # the exporter's own notices (torchvision ops it skips, its internal deprecations) are not the user's concern
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=[s.name for s in specs],
            output_names=graph.output_names(),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # torch still moves weights out past its 1.5 GB threshold
            optimize=False,  # the exporter's optimiser takes minutes on a 10k-node graph: clean_graph folds in seconds
            verbose=False,
        )
    external = Path(str(path) + ".data").exists()
    clean_graph(path, external, fold=getattr(graph, "precision", "fp32") == "fp32")
    onnx.checker.check_model(str(path), full_check=True)


def clean_graph(path: Path, external: bool, fold: bool = True) -> None:
    """Constant folding, dead and redundant nodes, shape inference, in place.

    ``fold``: ONNX Runtime's basic graph optimisations first (constant folding, redundant-node
    elimination, semantics-preserving fusions into standard ops; the level that "applies to all
    execution providers"): in C++, seconds where Python passes take minutes on the 10k-node step
    graphs. Not for fp16 graphs: the CPU provider it runs under has no fp16 kernels for most ops
    and would save Cast nodes around each. onnxslim then removes what is left (no-op casts,
    reshapes and expands), without its pattern fusions: they rewrite MatMul + Add as Gemm
    wrapped in Reshapes (what ``fold_constants`` keeps ORT from doing), change nothing
    measurable at run time, and were 80% of onnxslim's time (hallo-tiny's step graph: 160 s
    -> 33 s, bench/RESULTS.md). Graphs over 2 GB (weights in external data, beyond protobuf's limit)
    skip onnxslim and get ONNX shape inference on the file, never loaded whole into memory.
    """
    if fold:
        fold_constants(path, external)
    if external:
        onnx.shape_inference.infer_shapes_path(str(path), str(path), strict_mode=True)
        return
    import onnxslim

    model = onnxslim.slim(onnx.load(str(path)), skip_optimizations=["graph_fusion"])
    onnx.save_model(onnx.shape_inference.infer_shapes(model, strict_mode=True), str(path))


def fold_constants(path: Path, external: bool) -> None:
    """ONNX Runtime's basic, provider-independent optimisations, written back in place (standard ops only)."""
    import onnxruntime as ort

    folded = path.with_name(path.stem + ".folded.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    options.log_severity_level = 3  # its notices of nodes it leaves unfolded are not the user's concern
    if external:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", folded.name + ".data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    # MatMul + Add -> Gemm would wrap every 3-D projection in Reshapes (Gemm is 2-D): keep MatMul
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["MatMulAddFusion"])
    model = onnx.load(str(folded), load_external_data=False)
    foreign = {n.domain for n in model.graph.node} - {"", "ai.onnx"}
    if foreign:  # basic level never fuses into contrib ops; a bundle must stay portable if that changes
        raise EmoteError(f"{path.name}: constant folding introduced non-standard ops ({', '.join(sorted(foreign))})")
    used = {n.domain for n in model.graph.node} | {""}
    kept = [o for o in model.opset_import if o.domain in used]  # ORT lists every domain it knows
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if external:  # the weights keep their folded file, renamed to the graph's own data file below
        data = Path(str(path) + ".data")
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data.name
        os.replace(folded.with_name(folded.name + ".data"), data)
    onnx.save_model(model, str(path))
    folded.unlink()


def export_bundle(
    model: EMOModel,
    out: str | Path,
    *,
    weights: dict | None = None,
    precisions: tuple[str, ...] = ("fp32",),
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write every graph of ``model`` and ``manifest.json`` to the folder ``out``.

    ``precisions``: fp32 graphs always; "fp16" adds fp16 step graphs (``denoise_step.fp16.onnx``:
    backbone in fp16, norms, softmax and the solver update in fp32, I/O fp32).
    """
    out = Path(out)
    try:
        with staged_folder(out, bundle_format.BUNDLE, force=force) as folder:
            write_bundle(model, folder, weights, precisions, progress)
    except BaseException as e:
        if disk_full(e):
            raise EmoteError(f"disk full while writing the bundle to {out.parent}: nothing was written") from None
        raise
    return out


def write_bundle(model: EMOModel, folder: Path, weights: dict | None, precisions: tuple[str, ...], progress: bool) -> None:
    """Every graph, then the manifest, into ``folder`` (export_bundle's temporary one)."""
    started = time.perf_counter()
    graphs = all_graphs(model, precisions)
    entries = {}
    bar = tqdm(graphs, desc="export", unit="graph", disable=not progress)
    for g in bar:
        bar.set_postfix_str(g.name)
        entries[g.name] = export_entry(g, folder)
    cfg = model.config
    bundle_format.write_new(
        folder,
        preset=cfg.name,
        family=cfg.family,
        model=cfg.to_dict(),
        weights=weights or {"source": "unknown"},
        graphs=entries,
        emote_version=__version__,
        opset=OPSET,
        export_seconds=round(time.perf_counter() - started, 1),
    )


def export_entry(graph: Graph, folder: Path) -> dict:
    """``graph`` exported to ``folder/<name>.onnx``; its manifest entry."""
    file = f"{graph.name}.onnx"
    export_graph(graph, folder / file)
    return bundle_format.graph_entry(
        getattr(graph, "precision", "fp32"), file, (s.to_dict() for s in graph.inputs()), output_specs(folder / file)
    )


def disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the exception's chain (exporters may wrap the OSError in their own error)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def output_specs(path: Path) -> list[dict]:
    """Names, static shapes and dtypes of a graph's outputs, read from the ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    specs = []
    for o in model.graph.output:
        t = o.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs.append({"name": o.name, "shape": [d.dim_value for d in t.shape.dim], "dtype": dtype})
    return specs


def ensure_bundle(folder: str | Path, preset_name: str) -> Path:
    """The preset's bundle in ``folder``, exported again only if the model, weights or emote changed."""
    from ..models.checkpoint import resolve_model

    folder = Path(folder)
    model, weights = resolve_model(preset_name)
    if bundle_format.same_export(folder, model=model.config.to_dict(), weights=weights, emote_version=__version__):
        print(f"using the cached bundle {folder}")
        return folder
    print(f"exporting the {preset_name} model to {folder} (once; reused by later runs)")
    return export_bundle(model, folder, weights=weights, force=True)
