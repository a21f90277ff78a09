"""`emote`: the command line, thin over the package.

Each subcommand imports what it needs only when it runs (``emote generate`` never
loads torch). A user's mistake (``EmoteError``) is one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .errors import EmoteError


def _doctor(args) -> int:
    from .doctor import main

    return main()


def _export(args) -> int:
    from .export.bundle import export_bundle
    from .models.checkpoint import resolve_model

    model, weights = resolve_model(args.preset, args.checkpoint, seed=args.seed)
    if args.height is not None or args.width is not None:
        h, w = args.height or args.width, args.width or args.height
        if h != w:
            raise EmoteError(f"--height {h} and --width {w} differ: bundles are square for now (give one size)")
        resolution = h
    else:
        resolution = None
    try:
        model.with_geometry(frames=args.frames, resolution=resolution)
    except ValueError as e:
        raise EmoteError(str(e)) from None
    if weights["source"] == "random":
        print(f"emote: note: no checkpoint for preset {args.preset!r}: exporting random weights (seed {args.seed})", file=sys.stderr)
    precisions = ("fp32",) if args.precision == "fp32" else ("fp32", args.precision)
    out = export_bundle(model, args.out, weights=weights, precisions=precisions, force=args.force, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def _verify(args) -> int:
    from .bundle import Bundle
    from .export.parity import verify_bundle
    from .models.checkpoint import model_for_bundle
    from .runtime.backend_choice import resolve

    inputs = tuple(s.strip() for s in args.inputs.split(",") if s.strip())
    if not inputs or not set(inputs) <= {"random", "real"}:
        raise EmoteError(f"--inputs {args.inputs!r}: give random, real or random,real")
    bundle = Bundle.open(args.bundle)
    graphs = [g.strip() for g in args.graphs.split(",") if g.strip()] if args.graphs else None
    unknown = sorted(set(graphs or ()) - set(bundle.names))
    if unknown:
        raise EmoteError(f"--graphs: bundle {bundle.path} has no graph {', '.join(unknown)}")
    choice = resolve(args.backend, args.precision, _backend_flags(args))
    model = model_for_bundle(bundle, args.checkpoint)
    with choice.open() as backend:
        rows = verify_bundle(bundle.path, model, backend, precision=choice.precision, inputs=inputs, graphs=graphs)
    for r in rows:
        print(r.line())
    failed = [r for r in rows if not r.ok]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _backend_flags(args) -> dict:
    """--providers/--threads/--device/--streams/--engines/--cuda-graph as backend options, by the same
    names; the resolver (runtime/backend_choice.py) checks them against the backend and picks one they fit."""
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if getattr(args, "providers", None) else None
    flags = {
        "providers": providers,
        "threads": args.threads,
        "device": args.device,
        "streams": args.streams,
        "engines": getattr(args, "engines", None),
        "cuda_graph": getattr(args, "cuda_graph", None),
    }
    return {k: v for k, v in flags.items() if v is not None}


def _calibrate(args) -> int:
    from .calibration.record import calibrate

    out = calibrate(
        args.bundle,
        args.images,
        args.audio,
        args.out,
        samples=args.samples,
        steps=args.steps,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
    )
    print(f"wrote {out}")
    return 0


def _quantize(args) -> int:
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    say = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.precision == "fp16":
        from .bundle import Bundle
        from .calibration.fp16 import export_fp16

        bundle = export_fp16(Bundle.open(args.bundle), args.checkpoint, graphs, progress=say)
    else:
        from .calibration.quantize import quantize_bundle

        if not args.calib:
            raise EmoteError("--precision int8 needs --calib CALIB_DIR (make it with `emote calibrate`)")
        bundle = quantize_bundle(
            args.bundle, args.calib, graphs, target_db=args.target_db, sensitivity=not args.no_sensitivity, progress=say
        )
    for g in graphs:
        spec = bundle.graph(g, args.precision)
        q = spec.quantization
        extra = f": SQNR {', '.join(f'{k} {v:.1f} dB' for k, v in q['sqnr_db'].items())} on calibration data" if q else ""
        print(f"wrote {spec.path}{extra}")
    return 0


def _build(args) -> int:
    from .bundle import Bundle
    from .engines.trt_build import build_engines
    from .runtime.pipeline import buffer_bytes

    engine_dir, results = build_engines(
        args.bundle,
        args.precision,
        args.engines,
        opt_level=args.opt_level,
        workspace_gb=args.workspace,
        force=args.force,
        device=args.device,
    )
    plans = sum(r.plan_bytes for r in results)
    buffers = buffer_bytes(Bundle.open(args.bundle, check_hashes=False), "tensorrt", args.precision)
    built = sum(r.status == "built" for r in results)
    print(f"{built} built, {len(results) - built} up to date in {engine_dir}")
    print(
        f"device memory: plans {plans / 2**20:.0f} MB + runtime buffers {buffers / 2**20:.0f} MB "
        "+ one scratch block per stream (TensorRT reports it when loading)"
    )
    return 0


def _export_triton(args) -> int:
    from .export.triton import export_triton

    done = export_triton(
        args.bundle,
        args.out,
        kind=args.kind,
        instances=args.instances,
        videos=args.videos,
        precision=args.precision,
        sampler=args.sampler,
        steps=args.steps,
        engines=args.engines,
        force=args.force,
    )
    plans = sum(p == "tensorrt_plan" for p in done.models.values())
    print(f"wrote {done.path}: {len(done.models) - 1} graph models ({plans} TensorRT plans) and the streaming loop model emote_video")
    if done.plans_for is not None:
        gpu, trt = done.plans_for
        print(f"the plans run on {gpu} with TensorRT {trt} only: serve them with the Triton release built on that TensorRT")
    print(f"serve it on a GPU machine: tritonserver --model-repository {done.path} (docs/triton.md)")
    return 0


def _vocal_model(args):
    """--vocal-model [--vocal-n-fft] -> the pipeline's vocal separator (checked before any work), or None."""
    if args.vocal_model is None:
        if args.vocal_n_fft is not None:
            raise EmoteError("--vocal-n-fft needs --vocal-model")
        return None
    from .runtime.vocals import N_FFT, VocalSeparator

    n_fft = N_FFT if args.vocal_n_fft is None else args.vocal_n_fft
    if n_fft < 2:
        raise EmoteError(f"--vocal-n-fft must be at least 2, got {n_fft}")
    return VocalSeparator(args.vocal_model, n_fft=n_fft)


def _family_options(args) -> dict:
    """--face-embedding / --face-model / --region-weights -> the family options of Pipeline (Hallo bundles;
    the bundle's family refuses what it does not take)."""
    out: dict = {}  # both given: the Pipeline refuses it before any work
    if args.face_embedding:
        out["face_embedding"] = args.face_embedding  # a path: the pipeline reads it and checks it against the bundle
    if args.face_model:
        out["face_model"] = args.face_model
    if args.region_weights:
        try:
            weights = tuple(float(v) for v in args.region_weights.split(","))
        except ValueError:
            weights = ()
        if len(weights) != 3:
            raise EmoteError(f"--region-weights {args.region_weights!r}: expected POSE,FACE,LIP, e.g. 1,1,1")
        out["region_weights"] = weights
    return out


def _import_hallo(args) -> int:
    from .models.hallo import import_hallo

    report = import_hallo(
        args.net,
        args.sd_vae,
        args.wav2vec2,
        args.out,
        motion_module=args.motion_module,
        preset_name=args.preset,
        allow_unplaced=args.allow_unplaced,
        force=args.force,
    )
    for line in report.lines():
        print(line)
    print(f"wrote {args.out} (preset {args.preset}): emote export --preset {args.preset} --checkpoint {args.out} --out BUNDLE")
    return 0


def _import_echomimic(args) -> int:
    from .models.echomimic import import_echomimic

    report = import_echomimic(
        args.weights,
        args.out,
        acc=args.acc,
        sd_vae=args.sd_vae,
        whisper=args.whisper,
        base_unet=args.base_unet,
        preset_name=args.preset,
        force=args.force,
    )
    for line in report.lines():
        print(line)
    name = args.preset or ("echomimic-acc" if args.acc else "echomimic")
    print(f"wrote {args.out} (preset {name}): emote export --preset {name} --checkpoint {args.out} --out BUNDLE")
    return 0


def _generate(args) -> int:
    from .runtime.face import parse_face_box
    from .runtime.generate import generate_video
    from .runtime.pipeline import Pipeline

    face_box = parse_face_box(args.face_box) if args.face_box else None
    with Pipeline(
        args.bundle,
        backend=args.backend,
        precision=args.precision,
        sampler=args.sampler,
        steps=args.steps,
        guidance_scale=args.guidance,
        guidance_steps=args.guidance_steps if args.guidance_steps is not None else "default",
        backend_options=_backend_flags(args),
        unmarked_research=args.unmarked_research,
        size=args.size,
        vocal_model=_vocal_model(args),
        **_family_options(args),
    ) as pipe:
        summary = generate_video(
            pipe,
            args.image,
            args.audio,
            args.out,
            seed=args.seed,
            face_box=face_box,
            fps=args.fps,
            png_dir=args.png,
            npy_path=args.npy,
            progress=not args.quiet,
            hop=args.hop,
            schedule=args.schedule,
        )
    print(f"wrote {args.out}: {summary.line()}")
    return 0


def _detect(args) -> int:
    import json

    from .provenance.detect import detect_file
    from .provenance.watermark import Key

    key = Key(args.watermark_key) if args.watermark_key else Key.default()
    reports = [detect_file(f, key) for f in args.files]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for r in reports:
            print("\n".join(r.lines()))
    if any(not r.readable for r in reports):
        return 2
    return 0 if any(r.marked for r in reports) else 1


def _bench(args) -> int:
    from pathlib import Path

    from .bench.report import write_reports
    from .bench.run import benchmark
    from .bench.variants import compare_variants, default_variants, gpu_variants, select
    from .bundle import SAMPLE_RATE, Bundle
    from .export.bundle import ensure_bundle
    from .runtime.examples import example_inputs

    out = Path(args.out)
    if args.bundle and args.preset:
        raise EmoteError("give --bundle or --preset, not both")
    if args.quick:
        args.repeat = args.repeat or 2
        args.warmup = 1 if args.warmup is None else args.warmup
        args.seconds = args.seconds or 1.0
    preset_name = args.preset or ("tiny" if args.quick else None)
    if args.bundle:
        bundle = Bundle.open(args.bundle)
    elif preset_name:
        bundle = Bundle.open(ensure_bundle(out / f"bundle-{preset_name}", preset_name))
    else:
        raise EmoteError("give --bundle BUNDLE or --preset NAME (or --quick for the tiny preset)")
    specs = default_variants(bundle, quick=args.quick) + (gpu_variants(bundle) if args.gpu else [])
    if args.compare:
        other = Path(args.compare)
        if not other.is_dir():  # a preset name: its bundle exported (cached) beside the results
            from .models.config import PRESETS

            if args.compare not in PRESETS:
                raise EmoteError(f"--compare {args.compare}: neither a bundle folder nor a preset ({', '.join(PRESETS)})")
            other = ensure_bundle(out / f"bundle-{args.compare}", args.compare)
        specs += compare_variants(Bundle.open(other))
    names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    specs = select(specs, backend=args.backend, precision=args.precision, device=args.device, names=names)
    portrait, audio = example_inputs(bundle.geometry.resolution)
    if args.seconds:
        audio = audio[: int(args.seconds * SAMPLE_RATE)]
    record = benchmark(
        bundle.path,
        specs,
        portrait,
        audio,
        repeat=args.repeat or 3,
        warmup=1 if args.warmup is None else args.warmup,
        threads=args.threads,
        progress=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)),
    )
    if args.first_frame:
        from .bench.first_frame import cold_and_warm

        record["first_frame_process"] = cold_and_warm(
            specs,
            str(bundle.path),
            repeat=args.repeat or 3,
            seconds=args.seconds or 1.0,
            progress=(lambda m: None) if args.quiet else (lambda m: print(m, flush=True)),
        )
    record["command"] = "emote " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("emote") else None
    paths = write_reports(record, out)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _tune(args) -> int:
    import json

    from .bench.tune import tune

    names = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else None
    quiet = args.quiet
    result = tune(
        args.bundle,
        names,
        seconds=args.seconds,
        repeat=args.repeat,
        warmup=args.warmup,
        progress=(lambda m: None) if quiet else (lambda m: print(f"emote tune: {m}", file=sys.stderr, flush=True)),
    )
    if args.json:
        print(json.dumps(result.record, indent=1, default=float))
        return 0
    t = result.tuned
    print(result.table())
    where = " (the bundle folder is read-only: the user's cache)" if result.user_cache else ""
    print(
        f"chose {t.candidate} ({t.backend} {t.precision}, {', '.join(f'{k} {v}' for k, v in t.options.items())}); stored in {result.path}{where}"
    )


def _serve(args) -> int:
    import os
    from pathlib import Path

    from .bundle import Bundle
    from .serve.server import serve
    from .serve.sessions import ServeConfig

    bundle = Bundle.open(args.bundle)  # a bad bundle is one line now, not a server that never gets ready
    if args.hop is not None:  # and a hop it cannot cut
        from .runtime.pipeline import clip_windows_of

        try:
            clip_windows_of(bundle, args.hop)
        except EmoteError as e:
            raise EmoteError(f"--hop {args.hop}: {e}") from None
    cfg = ServeConfig(
        bundle=Path(args.bundle),
        api_key=args.api_key or os.environ.get("EMOTE_API_KEY") or None,
        cors_origins=tuple(args.cors_origin or ()),
        token_ttl=args.token_ttl,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_sessions=args.max_sessions,
        idle_timeout=args.idle_timeout,
        max_session_seconds=args.max_session_seconds,
        max_buffered_seconds=args.max_buffered_seconds,
        hop=args.hop,
        warm=args.warm,
        backend=args.backend,
        precision=args.precision,
    )
    ray_only = {"--replicas": args.replicas, "--max-replicas": args.max_replicas, "--replica-cpus": args.replica_cpus}
    ray_only |= {"--target-sessions": args.target_sessions, "--ray-address": args.ray_address}
    if not args.ray:
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise EmoteError(f"{', '.join(given)} need --ray")
        serve(cfg, host=args.host, port=args.port)
        return 0
    from .serve.ray_app import Scale, serve_ray
    from .serve.server import is_loopback

    if cfg.api_key is None and not is_loopback(args.host):
        raise EmoteError(f"--host {args.host} is reachable from other machines: give --api-key KEY (or serve on 127.0.0.1)")
    if args.port == 0:
        raise EmoteError("--ray needs a fixed --port (Ray's proxy does not take 0)")
    scale = Scale(
        replicas=2 if args.replicas is None else args.replicas,
        max_replicas=args.max_replicas,
        cpus=1.0 if args.replica_cpus is None else args.replica_cpus,
        target_sessions=args.target_sessions,
    )
    serve_ray(cfg, scale, host=args.host, port=args.port, address=args.ray_address)
    return 0


def _client(args) -> int:
    import os

    from .serve.client import run_client

    if (args.image is None) == (args.example is None):
        raise EmoteError("give --image FILE or --example NAME (one of them)")
    summary = run_client(
        args.url,
        args.api_key or os.environ.get("EMOTE_API_KEY"),
        args.image,
        args.audio,
        args.out,
        example=args.example,
        fast=args.fast,
        seed=args.seed,
        npy=args.npy,
    )
    print(f"wrote {args.out}: {summary.line()}")
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, steps=args.steps, unmarked_research=args.unmarked_research)


def _add_cpu_options(d) -> None:
    d.add_argument("--device", help="OpenVINO device: CPU (default), GPU, NPU (`emote doctor` lists them)")
    d.add_argument("--threads", type=int, help="CPU threads of the backend (default: all usable cores)")
    d.add_argument("--streams", type=int, help="OpenVINO streams (default 1: one request at a time, lowest latency)")


def _args_export(d) -> None:
    d.add_argument(
        "--preset",
        required=True,
        help="model preset: tiny, demo, demo-fast, emo-sd15, hallo, hallo-tiny, echomimic, echomimic-acc, echomimic-tiny",
    )
    d.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + config.json); default: shipped weights, else random")
    d.add_argument("--out", required=True, help="bundle folder to write")
    d.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16"],
        help="fp16 adds fp16 step graphs (norms, softmax, solver in fp32) beside the fp32 graphs",
    )
    d.add_argument("--frames", type=int, help="frames per clip (default: the preset's)")
    d.add_argument("--height", type=int, help="image height in pixels (default: the preset's)")
    d.add_argument("--width", type=int, help="image width in pixels (default: the preset's)")
    d.add_argument("--seed", type=int, default=0, help="seed of random weights when there is no checkpoint")
    d.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    d.add_argument("--quiet", action="store_true", help="no progress bar")


def _args_import_hallo(d) -> None:
    d.add_argument("--net", required=True, help="Hallo's net.pth (pretrained_models/hallo/net.pth)")
    d.add_argument("--sd-vae", required=True, help="the sd-vae-ft-mse folder (diffusers AutoencoderKL)")
    d.add_argument("--wav2vec2", required=True, help="the wav2vec2-base-960h folder (transformers)")
    d.add_argument(
        "--motion-module",
        help="AnimateDiff's mm_sd_v15_v2.ckpt: only needed if net.pth lacks the motion "
        "modules (Hallo's own net.pth holds them, fine-tuned)",
    )
    d.add_argument("-o", "--out", required=True, help="checkpoint folder to write (model.safetensors + config.json)")
    d.add_argument("--preset", default="hallo", help="hallo (default) or hallo-tiny (the CI-sized model of the same structure)")
    d.add_argument("--allow-unplaced", action="store_true", help="import even if some keys have no place in the model (they are listed)")
    d.add_argument("--force", action="store_true", help="replace an existing checkpoint folder")


def _args_import_echomimic(d) -> None:
    d.add_argument(
        "--weights",
        required=True,
        help="EchoMimic's pretrained_weights/ folder: reference_unet.pth, denoising_unet.pth, motion_module.pth, face_locator.pth",
    )
    d.add_argument(
        "--acc", action="store_true", help="the distilled weights (denoising_unet_acc.pth, motion_module_acc.pth): preset echomimic-acc"
    )
    d.add_argument("-o", "--out", required=True, help="checkpoint folder to write (model.safetensors + config.json)")
    d.add_argument("--sd-vae", help="the sd-vae-ft-mse folder (diffusers AutoencoderKL; default: WEIGHTS/sd-vae-ft-mse)")
    d.add_argument(
        "--whisper", help="whisper-tiny: OpenAI's tiny.pt or a transformers folder (default: WEIGHTS/audio_processor/whisper_tiny.pt)"
    )
    d.add_argument(
        "--base-unet",
        help="a diffusers UNet folder to fill keys denoising_unet.pth lacks (each one is listed; without it a missing key is an error)",
    )
    d.add_argument("--preset", help="echomimic (default), echomimic-acc (default with --acc) or echomimic-tiny (CI-sized, same structure)")
    d.add_argument("--force", action="store_true", help="replace an existing checkpoint folder")


def _args_verify(d) -> None:
    d.add_argument("bundle", help="bundle folder")
    d.add_argument("--checkpoint", help="the checkpoint the bundle was exported from (default: as recorded in the manifest)")
    d.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["onnxruntime", "openvino", "tensorrt"],
        help="default onnxruntime; tensorrt needs an NVIDIA GPU (it builds the plans it lacks)",
    )
    d.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16", "int8"],
        help="fp16/int8: the bundle's fp16/int8 graphs; bf16 (and fp16 on OpenVINO): the fp32 graphs at that precision",
    )
    d.add_argument("--inputs", default="random,real", help="random, real (example portrait and speech), or both")
    d.add_argument("--graphs", help="only these graphs, comma-separated (default: all), e.g. reference_net,clip_condition")
    _add_cpu_options(d)


def _args_calibrate(d) -> None:
    d.add_argument("bundle", help="bundle folder")
    d.add_argument("--images", required=True, help="folder of portrait images (a handful is enough)")
    d.add_argument("--audio", required=True, help="folder of speech or song files")
    d.add_argument("-o", "--out", required=True, help="calibration folder to write (calibration.json + shards)")
    d.add_argument("--samples", type=int, default=64, help="denoising-step calls to record (default 64)")
    d.add_argument(
        "--steps", type=int, help="sampler steps per clip: the timesteps covered (default 10; 1 for a bundle that samples in one step)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="replace an existing calibration folder")
    d.add_argument("--quiet", action="store_true", help="no progress bar")


def _args_quantize(d) -> None:
    d.add_argument("bundle", help="bundle folder")
    d.add_argument("--precision", required=True, choices=["int8", "fp16"])
    d.add_argument("--calib", help="calibration folder from `emote calibrate` (int8)")
    d.add_argument("--graphs", default="denoise_step,denoise_step_cond", help="graphs to convert (default: the step graphs)")
    d.add_argument(
        "--target-db",
        type=float,
        default=30.0,
        help="int8: step-output SQNR to keep on calibration data; the most sensitive layers stay float until met",
    )
    d.add_argument("--no-sensitivity", action="store_true", help="int8: skip the per-layer sweep (layers kept float by rule only)")
    d.add_argument("--checkpoint", help="fp16: the checkpoint the bundle was exported from (default: as recorded)")
    d.add_argument("--quiet", action="store_true")


def _args_build(d) -> None:
    d.add_argument("bundle", help="bundle folder")
    d.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "int8"],
        help="graphs to build from: the bundle's fp16 / int8 (Q/DQ) graphs where it has them, fp32 otherwise",
    )
    d.add_argument("--engines", help="folder for the plans (default: <bundle>/engines/<gpu>-cc<cc>-trt<version>-<bundle hash>)")
    d.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimization level 0-5 (default 3; 5 builds longest)")
    d.add_argument("--workspace", type=float, help="GB of scratch the builder may use per layer (default: TensorRT's)")
    d.add_argument("--device", type=int, default=0, help="CUDA device index")
    d.add_argument("--force", action="store_true", help="rebuild plans whose keys match")


def _args_export_triton(d) -> None:
    d.add_argument("bundle", help="bundle folder (from `emote export`)")
    d.add_argument("out", help="the model repository folder to write (written whole, or not at all)")
    d.add_argument(
        "--kind", default="gpu", choices=["gpu", "cpu"], help="where Triton runs the graph models: KIND_GPU (default) or KIND_CPU"
    )
    d.add_argument("--instances", type=int, default=1, help="instances of each graph model (per GPU with --kind gpu; default 1)")
    d.add_argument("--videos", type=int, default=1, help="instances of the loop model emote_video: videos generated at once (default 1)")
    d.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "int8"],
        help="the graphs the loop model calls: the bundle's fp16 / int8 variants (fp32 where a graph has none); every variant is exported",
    )
    d.add_argument("--sampler", choices=["ddim", "dpmpp_2m", "euler", "lcm"], help="the loop's sampler (default: the bundle's)")
    d.add_argument("--steps", type=int, help="the loop's sampling steps (default: the bundle's)")
    d.add_argument(
        "--engines", help="an engine folder of `emote build`: its plans become tensorrt_plan models in place of their ONNX graphs"
    )
    d.add_argument("--force", action="store_true", help="replace an existing model repository (never a folder holding anything else)")


def _args_generate(d) -> None:
    d.add_argument("--bundle", required=True, help="bundle folder (from `emote export`)")
    d.add_argument("--image", required=True, help="portrait image (any size; the face is found and cropped)")
    d.add_argument("--audio", required=True, help="speech or song: WAV, FLAC, OGG or MP3, any rate")
    d.add_argument("-o", "--out", required=True, help="output .mp4")
    d.add_argument("--sampler", choices=["ddim", "dpmpp_2m", "euler", "lcm"], help="default: the bundle's")
    d.add_argument("--steps", type=int, help="denoising steps (default: the bundle's)")
    d.add_argument("--guidance", type=float, help="audio guidance scale (1 = none)")
    d.add_argument("--guidance-steps", type=int, help="guide only the first N steps (cheaper)")
    d.add_argument("--seed", type=int, default=0, help="seed of the starting noise (same seed, same video; default 0)")
    d.add_argument(
        "--hop",
        type=int,
        metavar="H",
        help="each clip keeps H frames (motion frames .. a clip): as `emote serve --hop` cuts a live stream (default: whole clips)",
    )
    d.add_argument(
        "--schedule",
        choices=["clips", "windows"],
        help="clips: clip by clip, each frame out as its clip is done (as a live stream runs); windows: EchoMimic's "
        "context windows over the whole video, every step (EchoMimic bundles only; DDIM or Euler). Default: windows "
        "where the bundle has them and no --hop is given, else clips",
    )
    d.add_argument("--fps", type=float, help="output frame rate (default: the model's; frames are retimed)")
    d.add_argument(
        "--size",
        type=int,
        metavar="PX",
        help="output frames PX a side, resized bicubic from the model's and then watermarked (default: the model's, 128 "
        "for the demo bundle). At 512 the mark also survives CRF 35 and a screen recording, which it does not at 128",
    )
    d.add_argument(
        "--backend",
        choices=["onnxruntime", "openvino", "tensorrt"],
        help="default: the winner of `emote tune BUNDLE` on this machine; until it has run, openvino at bf16 where OpenVINO "
        "is installed and the CPU computes bf16 (openvino fp32 where it does not), else onnxruntime fp32",
    )
    d.add_argument("--providers", help="ONNX Runtime providers, comma-separated: cpu, cuda, tensorrt")
    d.add_argument("--engines", help="TensorRT plans (--backend tensorrt) or TensorRT EP caches (--providers tensorrt)")
    d.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay the denoising loop as a CUDA graph (default: on for --backend tensorrt, off for ONNX Runtime)",
    )
    d.add_argument(
        "--precision",  # not argparse choices: the bundle names the precisions it has
        help="fp32, fp16, bf16, int8. fp16/int8: the bundle's fp16/int8 graphs; bf16 (and fp16 on OpenVINO): the fp32 graphs at that "
        "precision (default: the backend's chosen one, see --backend; fp32 for onnxruntime and tensorrt)",
    )
    _add_cpu_options(d)
    d.add_argument("--face-box", help="X,Y,W,H of the face in the image, when detection fails")
    d.add_argument("--face-embedding", help="Hallo bundles: the face embedding, a .npy of 512 floats (InsightFace's; see the README)")
    d.add_argument(
        "--face-model",
        help="Hallo bundles: an ONNX face-recognition model (e.g. InsightFace's glintr100.onnx) "
        "that makes the face embedding from the portrait; never downloaded",
    )
    d.add_argument("--region-weights", help="Hallo bundles: POSE,FACE,LIP weights of the audio in each region (default 1,1,1)")
    d.add_argument(
        "--vocal-model",
        help="an MDX-Net vocal separation model (e.g. Kim_Vocal_2.onnx, as Hallo runs it) applied to the audio before "
        "the audio encoder; never downloaded. Without it, give clean voice (no music or background noise)",
    )
    d.add_argument("--vocal-n-fft", type=int, help="the vocal model's FFT size (default 7680: Kim_Vocal_2's and UVR-MDX-NET-Voc_FT's)")
    d.add_argument("--png", help="also write PNG frames to this folder")
    d.add_argument("--npy", help="also write all frames to this .npy file")
    d.add_argument(
        "--unmarked-research",
        action="store_true",
        help="research only: frames without the invisible watermark (the MP4's C2PA manifest still says generated)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")


def _args_bench(d) -> None:
    d.add_argument("--bundle", help="bundle to benchmark")
    d.add_argument("--preset", help="export this preset's bundle (cached in the output folder) and benchmark it")
    d.add_argument(
        "--variants",
        help="comma-separated variant names (default: all that apply); without the PyTorch reference, the first is the baseline",
    )
    d.add_argument(
        "--compare",
        metavar="BUNDLE_OR_PRESET",
        help="also run another bundle (or preset) at its own sampler defaults, in the same interleaved rounds: "
        "variants named PRESET:NAME (e.g. --preset demo-fast --compare demo: the student against its teacher)",
    )
    d.add_argument("--repeat", type=int, help="measured runs per variant (default 3; --quick 2)")
    d.add_argument("--warmup", type=int, help="unmeasured runs per variant first (default 1)")
    d.add_argument("--seconds", type=float, help="seconds of the example speech to use (default all; --quick 1)")
    d.add_argument("--threads", type=int, help="CPU threads for every backend (default: all usable cores)")
    d.add_argument("--quick", action="store_true", help="small and fast: tiny preset, 1 s of audio, 2 runs")
    d.add_argument("--gpu", action="store_true", help="add TensorRT variants, with and without the CUDA graph (needs a GPU)")
    d.add_argument("--backend", choices=["onnxruntime", "openvino", "tensorrt"], help="only this backend's variants (and the baseline)")
    d.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], help="only variants at this precision (and the baseline)")
    d.add_argument("--device", help="OpenVINO device of the openvino variants: CPU, GPU, NPU")
    d.add_argument(
        "--first-frame",
        action="store_true",
        help="also each CPU variant's first frame in fresh processes: cold (empty compiled-model cache) and warm (the cache filled)",
    )
    d.add_argument("-o", "--out", required=True, help="results folder: results.json, results.md, results.png")
    d.add_argument("--quiet", action="store_true")


def _args_tune(d) -> None:
    d.add_argument("bundle", help="bundle folder (from `emote export`)")
    d.add_argument(
        "--candidates",
        help="comma-separated, named BACKEND-PRECISION-tTHREADS[-sSTREAMS] (ort or ov; e.g. ort-fp32-t2,ov-fp32-t2-s1); "
        "default: every backend and precision that runs here, at all cores and at half of them",
    )
    d.add_argument("--seconds", type=float, default=1.5, help="seconds of the example speech per run (default 1.5)")
    d.add_argument("--repeat", type=int, default=3, help="measured runs per candidate, interleaved (default 3)")
    d.add_argument("--warmup", type=int, default=1, help="unmeasured runs per candidate first (default 1)")
    d.add_argument("--json", action="store_true", help="the whole record as JSON on stdout (progress still on stderr)")
    d.add_argument("--quiet", action="store_true", help="no progress lines")


def _args_serve(d) -> None:
    d.add_argument("--bundle", required=True, help="bundle folder (from `emote export`)")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs --api-key)")
    d.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, printed)")
    d.add_argument("--api-key", help="the key POST/DELETE /sessions need (X-API-Key or Authorization: Bearer); default $EMOTE_API_KEY")
    d.add_argument("--cors-origin", action="append", help="an origin allowed to call the API from a browser (repeatable; default none)")
    d.add_argument("--max-sessions", type=int, help="at most this many sessions (default: as many as the measured real-time factor allows)")
    d.add_argument("--token-ttl", type=float, default=60.0, help="seconds a session's token opens its stream (default 60)")
    d.add_argument("--max-upload-mb", type=float, default=10.0, help="largest portrait upload in MB (default 10)")
    d.add_argument(
        "--idle-timeout", type=float, default=120.0, help="end a session after this many seconds without a client message (default 120)"
    )
    d.add_argument("--max-session-seconds", type=float, default=1800.0, help="end a session after this many seconds (default 1800)")
    d.add_argument("--max-buffered-seconds", type=float, default=10.0, help="audio a session may hold unplayed; more ends it (default 10)")
    d.add_argument(
        "--hop",
        type=int,
        metavar="H",
        help="each clip keeps H frames: a clip waits for H + look-ahead frames of audio, not a whole clip's, "
        "for clip/H times the compute (counted in the session limit); default whole clips",
    )
    d.add_argument(
        "--warm",
        action="store_true",
        help="make a pipeline for every session of the limit at start, before /readyz says ready (memory: one per "
        "session), so sessions that start together do not wait on model loads; default: made as sessions need them",
    )
    d.add_argument("--backend", choices=["onnxruntime", "openvino", "tensorrt"], help="default: as `emote generate`")
    d.add_argument("--precision", help="fp32, fp16, bf16, int8 (default: the backend's chosen one)")
    d.add_argument(
        "--ray", action="store_true", help="serve through Ray Serve: replicas of this server behind one address (docs/scaling.md)"
    )
    d.add_argument("--replicas", type=int, help="--ray: replicas at start, and at least (default 2)")
    d.add_argument(
        "--max-replicas", type=int, help="--ray: autoscale up to this many replicas on sessions per replica (default: no autoscaling)"
    )
    d.add_argument("--replica-cpus", type=float, help="--ray: CPUs per replica; its backend runs that many threads (default 1)")
    d.add_argument(
        "--target-sessions", type=int, help="--ray: autoscaling's target of sessions per replica (default: --max-sessions, else 1)"
    )
    d.add_argument("--ray-address", help="--ray: join this Ray cluster (e.g. auto, or ray://HOST:10001) instead of starting one here")


def _args_client(d) -> None:
    d.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    d.add_argument("--api-key", help="the server's API key (default $EMOTE_API_KEY)")
    d.add_argument("--image", help="portrait image to upload")
    d.add_argument("--example", help="a portrait the server holds, by name (portrait), instead of --image")
    d.add_argument("--audio", required=True, help="speech or song: WAV, FLAC, OGG or MP3, any rate")
    d.add_argument("-o", "--out", required=True, help="output .mp4 (the frames and the audio that came with them)")
    d.add_argument("--fast", action="store_true", help="stream as fast as the server makes frames (default: real-time pace)")
    d.add_argument("--seed", type=int, default=0, help="seed of the starting noise, as `emote generate --seed` (default 0)")
    d.add_argument("--npy", help="also write the frames as received (decoded JPEG) to this .npy file")


def _args_demo(d) -> None:
    d.add_argument("--out", default="build/demo", help="output folder (default: build/demo)")
    d.add_argument("--steps", type=int, default=None, help="denoising steps (default: the bundle's)")
    d.add_argument(
        "--unmarked-research",
        action="store_true",
        help="research only: frames without the invisible watermark (the MP4's C2PA manifest still says generated)",
    )


def _args_detect(d) -> None:
    d.add_argument("files", nargs="+", metavar="FILE", help="video files (any container and codec PyAV reads)")
    d.add_argument(
        "--watermark-key",
        help="the key the videos were marked with (default: $EMOTE_WATERMARK_KEY, else emote's public key)",
    )
    d.add_argument("--json", action="store_true", help="one JSON list of reports on stdout")


# name, what runs it, its help line, what adds its arguments
COMMANDS = (
    ("doctor", _doctor, "versions, CPU features, GPUs and the backends that will work here", None),
    ("export", _export, "PyTorch model -> ONNX bundle (graphs + manifest.json)", _args_export),
    (
        "import-hallo",
        _import_hallo,
        "Hallo's released net.pth (+ its VAE and wav2vec2) -> a checkpoint of the hallo preset",
        _args_import_hallo,
    ),
    (
        "import-echomimic",
        _import_echomimic,
        "EchoMimic v1's released .pth files (+ its VAE and whisper-tiny) -> a checkpoint of an echomimic preset",
        _args_import_echomimic,
    ),
    ("verify", _verify, "each graph of a bundle against PyTorch: max abs/rel error and SQNR per output", _args_verify),
    ("calibrate", _calibrate, "record every graph's inputs over real denoising trajectories (for int8)", _args_calibrate),
    ("quantize", _quantize, "int8 (Q/DQ, from calibration data) or fp16 step graphs beside the fp32 ones", _args_quantize),
    ("build", _build, "TensorRT plans for a bundle on this GPU (fp16 / int8 graphs where the bundle has them)", _args_build),
    (
        "export-triton",
        _export_triton,
        "a Triton Inference Server model repository from a bundle: one model per graph and a streaming loop model",
        _args_export_triton,
    ),
    ("generate", _generate, "portrait + audio -> MP4 with the audio muxed in", _args_generate),
    ("bench", _bench, "latency per component and end to end, side by side with the PyTorch baseline", _args_bench),
    (
        "tune",
        _tune,
        "time every backend, precision and thread count here against the fidelity bars; store the fastest as this machine's default",
        _args_tune,
    ),
    (
        "detect",
        _detect,
        "C2PA manifest and watermark of video files: exit 0 when one is marked, 1 when none is, 2 when one is unreadable",
        _args_detect,
    ),
    ("serve", _serve, "live sessions over HTTP and WebSocket: audio in, frames and their audio out", _args_serve),
    ("client", _client, "a portrait and an audio file through a running `emote serve`, to an MP4", _args_client),
    ("demo", _demo, "the example portrait and speech through the embedded demo model, to a video", _args_demo),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emote",
        description="Emote Edge: run EMO-style talking-portrait diffusion models on edge GPUs and CPUs.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, run, help_line, add_arguments in COMMANDS:
        d = sub.add_parser(name, help=help_line)
        if add_arguments is not None:
            add_arguments(d)
        d.set_defaults(run=run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except EmoteError as e:
        print(f"emote: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emote: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
