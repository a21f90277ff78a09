"""Which backend, precision and options run: the one resolver the CLI, the Pipeline and the bench ask.

``resolve(backend, precision, options)`` returns a ``Choice``. What is named is kept
and checked (an unknown backend, an option the backend does not take, a precision it
cannot run: one ``EmoteError`` each); what is not named is chosen:

- options given without a backend name theirs: the backends that take every option
  given (``engines.OPTIONS``); the default backend if it is one of them, else the only
  one; several and none the default is an error asking for a name;
- no backend named, and a bundle given: the winner `emote tune` measured for this machine and
  bundle (``engines.tuned``: keyed by CPU model, cores, library versions and bundle hash), when it
  fits what is named (the precision, if named, is its precision; the options given are its
  backend's, and override its own); until the bundle is tuned here, the rule below, and one
  line on stderr says so (once per process);
- no backend and no options (and no tuned choice): the CPU-flag rule, from measured figures
  (bench/RESULTS.md, "Precision and CPU backends"): where OpenVINO is installed and its CPU device computes
  bf16 natively (AVX-512 BF16 or AMX), OpenVINO at bf16 on the fp32 graphs (on the demo
  model 1.5-2.0x OpenVINO fp32 per step at step SQNR 44 dB, frames 52 dB against fp32);
  OpenVINO without native bf16 (AVX2-only CPUs): OpenVINO fp32 (1.3x ONNX Runtime fp32
  end to end on an AVX2 Zen 3); without OpenVINO: ONNX Runtime fp32;
- a precision named without a backend runs on OpenVINO where its CPU device computes it
  (int8 from the Q/DQ graphs included, where the CPU has VNNI: ``engines.openvino.int8_exact``),
  else on ONNX Runtime;
- a backend named without a precision: bf16 for OpenVINO where its device computes it
  natively, else fp32.

Asking OpenVINO what its device computes imports OpenVINO, only when it is installed
and the answer is needed. Knows nothing of diffusion.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import precision as policy
from ..bundle import Bundle
from ..engines import OPTIONS, backends_taking, check_options
from ..engines.probe import has_module
from ..engines.tuned import Tuned, read_tuned, tune_key
from ..errors import EmoteError

MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = "named"  # "named", or how the default was chosen

    def open(self):
        """The backend, made (imported only now)."""
        from ..engines import open_backend

        return open_backend(self.backend, self.precision, **self.options)


def openvino_native(device: str = "CPU") -> list[str]:
    """Precisions the OpenVINO device computes natively (as it reports them)."""
    from ..engines.openvino import devices

    return next((p for d, _, p in devices() if d == device.split(".")[0]), ["fp32"])


def installed(backend: str) -> bool:
    return has_module(MODULES[backend])


def default_backend(precision: str | None = None) -> tuple[str, str, str]:
    """(backend, precision, reason) when no backend is named: see the module docstring."""
    if not installed("openvino"):
        return "onnxruntime", precision or "fp32", "OpenVINO is not installed"
    from ..engines.openvino import int8_exact
    from ..engines.probe import cpu_flags

    native = openvino_native()
    if precision is None:
        if "bf16" in native:
            return "openvino", "bf16", "OpenVINO's CPU computes bf16 natively"
        return "openvino", "fp32", "OpenVINO's CPU has no native bf16"
    if precision == "bf16" and "bf16" not in native:  # no other backend runs bf16 (bundles hold no bf16 graphs)
        raise EmoteError(
            f"no backend here computes bf16: OpenVINO's CPU device computes {', '.join(native)} (bf16 needs AVX-512 BF16 or AMX)"
        )
    if precision == "int8" and not int8_exact(cpu_flags()):
        return "onnxruntime", precision, "OpenVINO's int8 is inexact on a CPU without VNNI"
    if precision in native and precision in policy.RUNS["openvino"]:
        return "openvino", precision, f"OpenVINO's CPU computes {precision}"
    return "onnxruntime", precision, f"OpenVINO's CPU does not compute {precision}"


def default_precision(backend: str, device: str = "CPU") -> str:
    """The precision a named backend runs at when none is named."""
    if backend == "openvino" and "bf16" in openvino_native(device):
        return "bf16"
    return "fp32"


def tuned_choice(tuned: Tuned, path: Path, precision: str | None, options: dict[str, Any]) -> Choice | None:
    """The stored choice ``tuned`` (read from ``path``) as a Choice, if it fits what is named; else None."""
    if precision not in (None, tuned.precision) or not set(options) <= set(OPTIONS[tuned.backend]):
        return None  # named settings it does not fit: the rules below, without the note (it is tuned)
    merged = {**tuned.options, **options}
    check_options(tuned.backend, merged)
    policy.check(tuned.backend, tuned.precision)
    return Choice(tuned.backend, tuned.precision, merged, f"tuned: {tuned.candidate}, measured by `emote tune` ({path})")


_said_untuned: set[str] = set()  # bundle hashes this process has said it of


def say_untuned(bundle: Bundle, backend: str, precision: str, reason: str) -> None:
    """One line on stderr, once per process and bundle: the default is the flag rule until `emote tune` has run here."""
    if bundle.hash in _said_untuned:
        return
    _said_untuned.add(bundle.hash)
    print(
        f"emote: note: {bundle.path} is not tuned on this machine: {backend} {precision} by the CPU-flag rule ({reason}); "
        f"`emote tune {bundle.path}` measures the fastest",
        file=sys.stderr,
    )


def resolve(
    backend: str | None = None,
    precision: str | None = None,
    options: dict[str, Any] | None = None,
    bundle: Bundle | None = None,
) -> Choice:
    """The backend, precision and options to run (``bundle``: the bundle it runs, for its tuned choice); see
    the module docstring."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    if backend is None and bundle is not None:
        if precision is not None:
            policy.check("onnxruntime" if precision != "bf16" else "openvino", precision)  # a known precision
        tuned, path = read_tuned(bundle.path, tune_key(bundle.hash))
        choice = tuned_choice(tuned, path, precision, options) if tuned is not None else None
        if choice is not None:
            return choice
        choice = resolve(None, precision, options)
        if tuned is None:
            say_untuned(bundle, choice.backend, choice.precision, choice.reason.removeprefix("default: "))
        return choice
    if backend is not None:
        policy.check(backend, precision or "fp32")
        check_options(backend, options)
        if precision is None:
            precision = default_precision(backend, options.get("device", "CPU")) if installed(backend) else "fp32"
        policy.check(backend, precision)
        return Choice(backend, precision, options)
    if precision is not None:
        policy.check("onnxruntime" if precision != "bf16" else "openvino", precision)  # a known precision
    if not options:
        backend, precision, reason = default_backend(precision)
        return Choice(backend, precision, {}, f"default: {reason}")
    fits = backends_taking(options)
    if not fits:
        takes = "; ".join(f"{b} takes {', '.join(OPTIONS[b])}" for b in policy.BACKENDS)
        unknown = [k for k in options if not any(k in OPTIONS[b] for b in policy.BACKENDS)]
        if unknown:
            raise EmoteError(f"unknown backend option {', '.join(unknown)} ({takes})")
        raise EmoteError(f"no one backend takes all of the options {', '.join(options)}: name one with --backend ({takes})")
    default, _, reason = default_backend(precision)
    if default in fits:
        backend = default
    elif len(fits) == 1:
        backend, reason = fits[0], f"the options {', '.join(options)} are {fits[0]}'s"
    else:
        raise EmoteError(f"the options {', '.join(options)} fit {' and '.join(fits)}: name one with --backend")
    return replace(resolve(backend, precision, options), reason=f"default: {reason}")
