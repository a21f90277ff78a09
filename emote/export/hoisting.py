"""Checks that a step graph holds only per-step work (DESIGN.md: hoist what does not depend on x_t)."""

from __future__ import annotations

import onnx

HEAVY = {"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "QLinearConv"}
STEP_INPUTS = ("x", "row", "x0_prev", "noise")


def misplaced_work(model: onnx.ModelProto, step_inputs: tuple[str, ...] = STEP_INPUTS) -> list[str]:
    """Heavy nodes none of whose inputs depends on a per-step input: work to hoist out of the step.

    A tensor is per-step if it is a per-step graph input or any node producing it
    reads a per-step tensor; everything else is a function of weights and per-clip
    or per-video inputs, which the runtime computes once in reference_net or clip_condition.
    """
    per_step = set(step_inputs)
    bad = []
    for node in model.graph.node:  # ONNX requires topological order
        if any(i in per_step for i in node.input if i):
            per_step.update(node.output)
        elif node.op_type in HEAVY:
            bad.append(f"{node.op_type} {node.name or node.output[0]}")
    return bad
