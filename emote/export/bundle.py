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
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from .. import __version__
from ..errors import EmoteError
from ..models.emo import EMOModel
from ..runtime.manifest import FORMAT, MANIFEST, file_sha256, write_manifest
from .graphs import Graph, all_graphs

OPSET = 18
EXTERNAL_DATA_BYTES = 1_800_000_000  # below protobuf's 2 GiB limit, with room for the graph itself


def export_graph(graph: Graph, path: Path) -> None:
    """One graph to ONNX: static shapes, opset 18, cleaned, checked."""
    graph.eval()  # the exporter restores the wrapper's mode afterwards: keep it eval
    rng = np.random.default_rng(0)
    specs = graph.inputs()
    example = graph.example(rng)
    args = tuple(torch.from_numpy(example[s.name]) for s in specs)
    n_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    external = n_bytes > EXTERNAL_DATA_BYTES
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
            external_data=external,
            optimize=True,
            verbose=False,
        )
    clean_graph(path, external)
    onnx.checker.check_model(str(path), full_check=True)


def clean_graph(path: Path, external: bool) -> None:
    """Constant folding, dead-node removal and shape inference (onnxslim), in place."""
    import onnxslim

    model = onnx.load(str(path), load_external_data=True)
    model = onnxslim.slim(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    if external:
        data = path.name + ".data"
        for f in path.parent.glob(path.name + "*.data"):
            f.unlink()
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    else:
        onnx.save_model(model, str(path))


def export_bundle(
    model: EMOModel, out: str | Path, *, weights: dict | None = None, force: bool = False, progress: bool = True
) -> Path:
    """Write every graph of ``model`` and ``manifest.json`` to the folder ``out``."""
    out = Path(out)
    if out.exists() and not force:
        raise EmoteError(f"output folder {out} exists: pass --force to replace it")
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise EmoteError(f"output folder {out} exists and is not a bundle: refusing to replace it, choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    started = time.perf_counter()
    try:
        graphs = all_graphs(model)
        entries = {}
        bar = tqdm(graphs, desc="export", unit="graph", disable=not progress)
        for g in bar:
            bar.set_postfix_str(g.name)
            export_graph(g, tmp / f"{g.name}.onnx")
            entries[g.name] = {
                "file": f"{g.name}.onnx",
                "precision": "fp32",
                "inputs": [s.to_dict() for s in g.inputs()],
                "outputs": output_specs(tmp / f"{g.name}.onnx"),
            }
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        cfg = model.config
        manifest = {
            "format": FORMAT,
            "emote_version": __version__,
            "preset": cfg.name,
            "model": cfg.to_dict(),
            "opset": OPSET,
            "weights": weights or {"source": "unknown"},
            "sampler": {
                "family": cfg.sampler,
                "steps": cfg.steps,
                "guidance_scale": cfg.guidance_scale,
                "guidance_steps": cfg.guidance_steps,
                "prediction_type": cfg.prediction_type,
                "spacing": cfg.timestep_spacing,
                "zero_snr": cfg.zero_snr,
            },
            "graphs": entries,
            "files": files,
            "export_seconds": round(time.perf_counter() - started, 1),
        }
        write_manifest(tmp, manifest)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise EmoteError(f"disk full while writing the bundle to {out.parent}: nothing was written") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def output_specs(path: Path) -> list[dict]:
    """Names, static shapes and dtypes of a graph's outputs, read from the ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    specs = []
    for o in model.graph.output:
        t = o.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs.append({"name": o.name, "shape": [d.dim_value for d in t.shape.dim], "dtype": dtype})
    return specs
