"""Export time per graph of a preset (random weights): seconds and node count of each cleaned graph.

    .venv/bin/python bench/export_time.py --preset hallo-tiny [-o build/export-time.json]

Each graph goes through ``export_graph`` exactly as ``emote export`` writes it (trace,
translate, fold, onnxslim, full checker) into a temporary folder that is removed after.
Run it on two commits to compare export pipelines; the machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import onnx

from emote.export.bundle import export_graph
from emote.export.graphs import all_graphs
from emote.models.config import preset
from emote.models.emo import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="hallo-tiny")
    ap.add_argument("-o", "--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    model = build_model(preset(args.preset), seed=0)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for graph in all_graphs(model):
            path = Path(tmp) / f"{graph.name}.onnx"
            t = time.perf_counter()
            export_graph(graph, path)
            seconds = time.perf_counter() - t
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            rows.append({"graph": graph.name, "seconds": round(seconds, 1), "nodes": nodes})
            print(f"{graph.name:20s} {seconds:7.1f} s {nodes:7d} nodes", flush=True)
    total = round(time.perf_counter() - started, 1)
    print(f"{'total':20s} {total:7.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"preset": args.preset, "machine": platform.processor() or platform.machine(), "graphs": rows, "total_seconds": total},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
