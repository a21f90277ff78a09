"""A/B: ONNX Runtime's spinning thread pools on or off, interleaved in one run.

    .venv/bin/python bench/ort_spinning.py BUNDLE [--seconds 3] [--repeat 5] -o build/bench-spinning

The runtime alternates seven sessions (reference, audio, VAE, condition, two step
graphs, decoder); each session's pool spins after its calls. This measures what
that costs on this machine, with the frames checked identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emote.bench.report import write_reports
from emote.bench.run import benchmark
from emote.bench.variants import VariantSpec
from emote.bundle import SAMPLE_RATE, Bundle
from emote.runtime.examples import example_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args()
    bundle = Bundle.open(args.bundle)
    specs = [
        VariantSpec(f"ort-{name}-dpm4-g1", "runtime", "dpmpp_2m", 4, 1, backend_options={"spinning": spin})
        for name, spin in (("spinning", True), ("no-spinning", False))
    ]
    portrait, audio = example_inputs(bundle.geometry.resolution)
    record = benchmark(bundle.path, specs, portrait, audio[: int(args.seconds * SAMPLE_RATE)], repeat=args.repeat)
    paths = write_reports(record, Path(args.out))
    print(paths["markdown"].read_text())


if __name__ == "__main__":
    main()
