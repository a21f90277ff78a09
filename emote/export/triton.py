"""`emote export-triton`: a Triton Inference Server model repository made from a bundle.

Layout (``tritonserver --model-repository OUT`` serves it; docs/triton.md):

    OUT/<graph>/config.pbtxt, OUT/<graph>/1/model.onnx   one model per graph file of the bundle,
                                                          platform onnxruntime_onnx; the fp16 and
                                                          int8 variants as <graph>_fp16, <graph>_int8
    OUT/<graph>/1/model.plan                              platform tensorrt_plan instead, for the
                                                          graphs an engine folder (`emote build`,
                                                          --engines) has a plan of
    OUT/emote_video/config.pbtxt, 1/model.py              the clip loop: a decoupled Python-backend
                                                          model that calls the graph models (BLS)
                                                          and streams each clip's frames
    OUT/emote_video/1/bundle/                             the bundle's manifest (geometry, sampler,
                                                          tensors), read by the loop model
    OUT/emote_video/1/repository.json                     what this repository was made from

Every graph model has the static shapes of its GraphSpec (``max_batch_size: 0``: the dims
are the whole tensor) and one instance group (KIND_GPU or KIND_CPU). The configs are
written as protobuf text by this module; the tests parse each with Triton's own
``model_config.proto`` (tritonclient). The repository is written whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import precision as policy
from ..bundle import Bundle, GraphSpec, copy_manifest
from ..engines.engine_key import EngineKey, plan_paths, read_key, sha256_bytes
from ..errors import EmoteError
from ..folders import FolderKind, staged_folder

FORMAT = "emote-triton/1"
LOOP = "emote_video"  # the decoupled loop model's name
VERSION = "1"  # every model is served as version 1
RECORD = f"{LOOP}/{VERSION}/repository.json"
REPOSITORY = FolderKind("Triton model repository", RECORD, FORMAT, "make one with `emote export-triton`")
LOOP_SOURCE = Path(__file__).with_name("triton_model.py")  # copied as the loop model's model.py

# numpy dtype names (TensorSpec.dtype) -> model_config.proto DataType
DATA_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".plan": ("tensorrt_plan", "model.plan")}


def model_name(key: str) -> str:
    """The Triton model of a manifest graph key: 'denoise_step.fp16' -> 'denoise_step_fp16'."""
    return key.replace(".", "_")


@dataclass(frozen=True)
class Tensor:
    """One input or output as config.pbtxt declares it: dims -1 where the size varies per request."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False


def data_type(dtype: str, where: str) -> str:
    if dtype not in DATA_TYPES:
        raise EmoteError(f"{where} is {dtype}: Triton configs here take {', '.join(DATA_TYPES)}")
    return DATA_TYPES[dtype]


def graph_tensors(spec: GraphSpec) -> tuple[list[Tensor], list[Tensor]]:
    def one(t, side):
        return Tensor(t.name, data_type(t.dtype, f"{spec.key} {side} {t.name!r}"), t.shape)

    return [one(t, "input") for t in spec.inputs], [one(t, "output") for t in spec.outputs]


# -- protobuf text, as model_config.proto spells its fields ----------------------------------------
def _string(text: str) -> str:
    return json.dumps(text)  # ASCII names and values: JSON's quoting is protobuf text's


def _tensors(field: str, tensors: Iterable[Tensor]) -> list[str]:
    items = []
    for t in tensors:
        parts = [f"name: {_string(t.name)}", f"data_type: {t.data_type}", f"dims: [ {', '.join(str(d) for d in t.dims)} ]"]
        if t.optional:
            parts.append("optional: true")
        items.append("  {\n" + "".join(f"    {p}\n" for p in parts) + "  }")
    return [f"{field} [", ",\n".join(items), "]"]


def config_text(
    name: str,
    *,
    inputs: Iterable[Tensor],
    outputs: Iterable[Tensor],
    kind: str,
    count: int,
    platform: str | None = None,
    backend: str | None = None,
    decoupled: bool = False,
    parameters: dict[str, str] | None = None,
) -> str:
    lines = [f"name: {_string(name)}"]
    lines.append(f"platform: {_string(platform)}" if platform else f"backend: {_string(backend)}")
    lines.append("max_batch_size: 0")  # dims are whole tensors: the graphs have static shapes
    if decoupled:
        lines += ["model_transaction_policy {", "  decoupled: true", "}"]
    lines += _tensors("input", inputs)
    lines += _tensors("output", outputs)
    lines += ["instance_group [", "  {", f"    kind: {kind}", f"    count: {count}", "  }", "]"]
    for key, value in (parameters or {}).items():
        lines += ["parameters {", f"  key: {_string(key)}", f"  value: {{ string_value: {_string(value)} }}", "}"]
    return "\n".join(lines) + "\n"


# -- the loop model's interface ----------------------------------------------------------------------
def loop_tensors(bundle: Bundle, family_inputs: tuple[str, ...]) -> tuple[list[Tensor], list[Tensor]]:
    """What a client sends the loop model and what each of its responses holds (one clip's frames)."""
    g = bundle.geometry
    inputs = [
        Tensor("image", "TYPE_UINT8", (-1, -1, 3)),  # RGB of any size: the face is found and cropped
        Tensor("audio", "TYPE_FP32", (-1,)),  # the whole track, 16 kHz mono float32
        Tensor("seed", "TYPE_INT64", (1,), optional=True),
        Tensor("face_box", "TYPE_INT32", (4,), optional=True),  # x, y, w, h where the face detector finds none
    ]
    per_family = {"speed": (1,), "face_embedding": (g.face_embedding_dim,)}  # what runtime/families/ take per video
    unknown = [n for n in family_inputs if n not in per_family]
    if unknown:
        raise EmoteError(f"{bundle.describe()}: its family's inputs {', '.join(unknown)} have no Triton tensor yet")
    inputs += [Tensor(n, "TYPE_FP32", per_family[n], optional=True) for n in family_inputs]
    outputs = [Tensor("frames", "TYPE_UINT8", (-1, g.resolution, g.resolution, 3)), Tensor("first_frame", "TYPE_INT64", (1,))]
    return inputs, outputs


# -- plans -------------------------------------------------------------------------------------------
def usable_plans(bundle: Bundle, engine_dir: Path) -> dict[str, tuple[Path, EngineKey]]:
    """The TensorRT plans in ``engine_dir`` by graph key, each checked against its key and the bundle."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EmoteError(f"--engines {engine_dir}: no such folder (make the plans with `emote build {bundle.path}`)")
    plans = {}
    for key, spec in bundle.graphs.items():
        plan, key_path = plan_paths(engine_dir, key)
        if not plan.is_file():
            continue
        found = read_key(key_path)
        if found is None:
            raise EmoteError(f"{plan} has no readable engine key beside it ({key_path.name}): rebuild it with `emote build`")
        if found.bundle_hash != bundle.hash or found.onnx_sha256 != spec.sha256:
            raise EmoteError(f"{plan} was built from another bundle than {bundle.path}: rebuild it with `emote build {bundle.path}`")
        if found.plan_sha256 != sha256_bytes(plan.read_bytes()):
            raise EmoteError(f"{plan} does not match the sha256 in {key_path.name} (modified or truncated): rebuild it with `emote build`")
        plans[key] = (plan, found)
    if not plans:
        raise EmoteError(
            f"--engines {engine_dir} holds no TensorRT plan of {bundle.describe()}: make them with `emote build {bundle.path}`"
        )
    return plans


# -- the repository ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exported:
    path: Path
    models: dict[str, str]  # model name -> platform or backend
    loop_graphs: dict[str, str]  # graph -> the model the loop calls
    plans_for: tuple[str, str] | None  # (gpu, TensorRT version) the plans were built for


def export_triton(
    bundle_path: str | Path,
    out: str | Path,
    *,
    kind: str = "gpu",
    instances: int = 1,
    videos: int = 1,
    precision: str = "fp32",
    sampler: str | None = None,
    steps: int | None = None,
    engines: str | Path | None = None,
    force: bool = False,
) -> Exported:
    """Write the model repository of ``bundle_path`` to ``out`` (whole, or nothing on any error)."""
    if kind not in KINDS:
        raise EmoteError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    if instances < 1 or videos < 1:
        raise EmoteError(f"--instances {instances} / --videos {videos}: at least 1 each")
    bundle = Bundle.open(bundle_path)
    from ..runtime.families import family_for
    from ..runtime.pipeline import GRAPHS, sampler_table

    loop_specs = policy.graphs_for(bundle, "onnxruntime", precision, GRAPHS)  # refuses a precision the bundle lacks
    table = sampler_table(bundle, sampler, steps)  # refuses an unknown sampler or step count before any work
    plans = usable_plans(bundle, Path(engines)) if engines is not None else {}
    built_for = {(k.gpu, k.tensorrt) for _, k in plans.values()}
    if len(built_for) > 1:
        raise EmoteError(f"--engines {engines} holds plans of several GPUs or TensorRT versions: {sorted(built_for)}")
    models: dict[str, str] = {}
    with staged_folder(out, REPOSITORY, force=force) as tmp:
        for key, spec in bundle.graphs.items():
            name = model_name(key)
            source = plans[key][0] if key in plans else spec.path
            platform, filename = PLATFORMS[source.suffix]
            version = tmp / name / VERSION
            version.mkdir(parents=True)
            shutil.copyfile(source, version / filename)
            data = Path(str(spec.path) + ".data")  # weights over 2 GB: the ONNX names this file beside it
            if platform == "onnxruntime_onnx" and data.is_file():
                shutil.copyfile(data, version / data.name)
            inputs, outputs = graph_tensors(spec)
            text = config_text(name, platform=platform, inputs=inputs, outputs=outputs, kind=KINDS[kind], count=instances)
            (tmp / name / "config.pbtxt").write_text(text)
            models[name] = platform
        loop_graphs = {graph: model_name(spec.key) for graph, spec in loop_specs.items()}
        inputs, outputs = loop_tensors(bundle, family_for(bundle).inputs)
        parameters = {"precision": precision, "sampler": table.family, "steps": str(table.steps)}
        parameters.update({f"graph.{g}": m for g, m in loop_graphs.items()})
        version = tmp / LOOP / VERSION
        (version / "bundle").mkdir(parents=True)
        shutil.copyfile(LOOP_SOURCE, version / "model.py")
        copy_manifest(bundle, version / "bundle")
        # the loop runs numpy on the host: its instances are processes on the CPU, one video each
        text = config_text(
            LOOP, backend="python", decoupled=True, inputs=inputs, outputs=outputs, kind="KIND_CPU", count=videos, parameters=parameters
        )
        (tmp / LOOP / "config.pbtxt").write_text(text)
        models[LOOP] = "python"
        record = {
            "format": FORMAT,
            "bundle_hash": bundle.hash,
            "preset": bundle.preset,
            "models": models,
            "loop": {"precision": precision, "sampler": table.family, "steps": table.steps, "graphs": loop_graphs},
            "plans_built_for": None if not built_for else dict(zip(("gpu", "tensorrt"), next(iter(built_for)))),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=1))
    return Exported(Path(out), models, loop_graphs, next(iter(built_for)) if built_for else None)
