"""The denoising loop of one clip as data: K bound step calls over fixed buffers, in order.

The runtime describes the loop once per (clip shape, steps, sampler table) as a
``StepPlan``: which bound call runs at step i, which ping-pong side it reads and
writes, the sampler table whose row i must be in the ``row`` buffer before call i,
and the ``noise`` buffer of stochastic samplers. A backend turns the plan into a
``Loop`` (``Backend.loop``): the default ``HostLoop`` writes each row from the host
and runs the calls in Python; a GPU backend stages the table in device memory once
and captures the whole sequence (device copies + calls) as one CUDA graph.

``StepPlan.ops`` is the single source of the order both follow. Knows buffers and
calls, nothing of any engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Timer = Callable[[str, Callable[[], None]], None]


@dataclass(frozen=True)
class Step:
    call: Callable[[], None]  # the bound graph call of this step
    stage: str  # timing name: 'denoise_step' or 'denoise_step_cond'
    reads: int  # ping-pong side it reads (x[reads], x0_prev[reads])
    writes: int  # side it writes (x_next -> x[writes], x0 -> x0[writes])


@dataclass(frozen=True)
class StepPlan:
    steps: tuple[Step, ...]
    row: object  # the buffer every step graph reads its sampler row from
    rows: np.ndarray  # (K, R) sampler table
    noise: object | None = None  # the per-step noise buffer (stochastic samplers only)

    def __post_init__(self):
        if len(self.steps) == 0:
            raise ValueError("a step plan needs at least one step")
        if self.rows.ndim != 2 or self.rows.shape[0] != len(self.steps):
            raise ValueError(f"sampler table has {self.rows.shape[0]} rows for {len(self.steps)} steps")
        for i in range(1, len(self.steps)):
            if self.steps[i].reads != self.steps[i - 1].writes:
                raise ValueError(f"step {i} reads side {self.steps[i].reads} but step {i - 1} wrote side {self.steps[i - 1].writes}")

    @property
    def k(self) -> int:
        return len(self.steps)

    @property
    def result(self) -> int:
        """The ping-pong side holding x_0 after the last step."""
        return self.steps[-1].writes

    def ops(self) -> list[tuple[str, str, int]]:
        """The loop in order: ('copy', 'row'|'noise', i) stages step i's inputs, ('run', stage, i) runs it."""
        out: list[tuple[str, str, int]] = []
        for i, s in enumerate(self.steps):
            out.append(("copy", "row", i))
            if self.noise is not None:
                out.append(("copy", "noise", i))
            out.append(("run", s.stage, i))
        return out


class HostLoop:
    """The loop run from the host: row i (and noise i) written with ``from_host``, then call i."""

    captured = False

    def __init__(self, backend, plan: StepPlan):
        self.backend, self.plan = backend, plan
        self.rows = np.ascontiguousarray(plan.rows, np.float32)
        self.noise: np.ndarray | None = None

    def set_noise(self, noise: np.ndarray) -> None:
        """This clip's per-step noise, (K, *latent); only for plans with a noise buffer."""
        if self.plan.noise is None:
            raise ValueError("this sampler is deterministic: its step plan has no noise buffer")
        self.noise = np.ascontiguousarray(noise, np.float32)

    def __call__(self, timed: Timer | None = None) -> None:
        be, plan = self.backend, self.plan
        if plan.noise is not None and self.noise is None:
            raise ValueError("set_noise() first: the sampler is stochastic")
        for op, what, i in plan.ops():
            if op == "copy":
                be.from_host(plan.row if what == "row" else plan.noise, self.rows[i] if what == "row" else self.noise[i])
            elif timed is not None:
                timed(what, plan.steps[i].call)
            else:
                plan.steps[i].call()

    def refuse(self, reason: str) -> None:
        """Part of the loop contract (a capturing loop stops capturing): a host loop captures nothing."""

    def close(self) -> None:
        pass


def loop_state(loop) -> str:
    """How a loop runs, for the bench's record: 'cuda graph', 'uncaptured: <why>' or 'host loop'."""
    if getattr(loop, "captured", False):
        return "cuda graph"
    if getattr(loop, "failed", None):
        return f"uncaptured: {loop.failed}"
    return "uncaptured (cuda_graph off)" if hasattr(loop, "capture") else "host loop"
