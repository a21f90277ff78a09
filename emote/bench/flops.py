"""FLOPs of an ONNX graph, counted from its static shapes.

Counted: MatMul and Gemm (2 x M x N x K per output batch), Conv (2 x output
elements x Cin/groups x kernel area). Not counted: elementwise ops, norms,
softmax, resizes (a few percent of a UNet's work; stated in every report).
Shapes come from the graph's value_info (export runs shape inference).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def count_flops(path: str | Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    if not any(v for v in model.graph.value_info):
        model = onnx.shape_inference.infer_shapes(model)
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if out is None:
            continue
        if node.op_type in ("MatMul", "Gemm"):
            a = shapes.get(node.input[0])
            if a is None:
                continue
            k = a[-1] if not (node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)) else a[-2]
            total += 2 * int(np.prod(out)) * k
        elif node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w is None:
                continue
            total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))  # w: (Cout, Cin/groups, kh, kw)
    return total
