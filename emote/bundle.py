"""The bundle: the folder `emote export` writes and every other layer reads, typed.

A bundle is ``manifest.json`` plus ONNX graphs. The manifest records the format
version, the preset and its whole model config, the weights' source, every graph's
tensors and precision, and the sha256 of every file; the bundle hash (over the file
hashes) keys engine caches, so a plan or compiled model of another bundle is never
loaded. This module is the only one that reads or writes ``manifest.json``: the
rest of the package sees frozen dataclasses, validated once on open, each failure
one ``EmoteError`` naming the field. Engines are handed a ``GraphSpec`` (file,
tensors, precision, sha256, bundle hash), never the manifest.

At the base of the package: the standard library only (no numpy, no torch), so
that engines, the runtime and the exporters can all import it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EmoteError
from .folders import FolderKind, read_manifest, write_atomic

# wav2vec2's (and whisper's) input rate: every bundle's audio encoder takes 16 kHz mono;
# at 25 fps one video frame is 16000 / 25 = 640 samples.
SAMPLE_RATE = 16_000

FORMAT = "emote-bundle/2"
# emote-bundle/1 also held the sampler defaults in a "sampler" block, a copy of the model
# config's fields under other names; it is read exactly as /2 (from the model config).
READS = ("emote-bundle/1", FORMAT)
MANIFEST = "manifest.json"
BUNDLE = FolderKind("bundle", MANIFEST, FORMAT, "make one with `emote export`")

FAMILIES = ("emo", "hallo", "echomimic")  # runtime/families/: what each binds beyond the common graphs
WHISPER_LOOKAHEAD = 3  # video frames past a clip EchoMimic's last window needs at 25 fps: centre+5 < 2 (i+3)
WINDOWINGS = ("clip", "track")  # how the audio encoder sees the audio: per clip, or Hallo's whole track


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bundle_hash(files: Mapping[str, str]) -> str:
    """A short stable id of the bundle's content: sha256 over the sorted file hashes."""
    text = "\n".join(f"{name} {sha}" for name, sha in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- reading: one-line errors naming the field ------------------------------------------------
class _Fields:
    """Typed access to one JSON object of the manifest; a missing or mistyped field is named."""

    def __init__(self, data: Any, where: str, path: Path):
        if not isinstance(data, dict):
            raise EmoteError(f"bundle {path}: {MANIFEST} field {where} is not an object (re-export with `emote export`)")
        self.data, self.where, self.path = data, where, path

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is not ...:
                return default
            raise EmoteError(f"bundle {self.path}: {MANIFEST} has no field {self._name(key)} (re-export with `emote export`)")
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise EmoteError(f"bundle {self.path}: {MANIFEST} field {self._name(key)} is {value!r}, expected {names}")
        return value

    def sub(self, key: str) -> _Fields:
        return _Fields(self.get(key, dict), self._name(key), self.path)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy's name: float32, float16, uint8, int64

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def read(cls, f: _Fields) -> TensorSpec:
        shape = f.get("shape", list)
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise EmoteError(f"bundle {f.path}: {MANIFEST} field {f.where}.shape is {shape}: static positive sizes only")
        return cls(f.get("name", str), tuple(shape), f.get("dtype", str))


@dataclass(frozen=True)
class GraphSpec:
    """One graph file of a bundle: everything an engine needs to open, key and check it."""

    key: str  # manifest key: 'denoise_step', 'denoise_step.fp16', ...
    name: str  # the graph: 'denoise_step'
    precision: str  # fp32, fp16, int8: the arithmetic written into the graph
    path: Path  # the ONNX file
    sha256: str
    bundle_hash: str  # "" for a graph outside any bundle
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    quantization: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def file(self) -> str:
        return self.path.name

    @property
    def folder(self) -> Path:
        """The bundle's folder (engine caches live in its ``engines/``)."""
        return self.path.parent

    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of every input and output."""
        return {t.name: (t.shape, t.dtype) for t in (*self.inputs, *self.outputs)}

    @classmethod
    def standalone(cls, path: str | Path, name: str | None = None, precision: str = "fp32") -> GraphSpec:
        """An ONNX file outside any bundle (a benchmark's GEMM, a test's one-op graph): the
        engine reads its tensors from the file; nothing is cached, keyed or checked by hash."""
        path = Path(path)
        return cls(name or path.stem, name or path.stem, precision, path, "", "")


@dataclass(frozen=True)
class Geometry:
    """What the runtime needs of the model: clip shapes, audio windows, per-video defaults."""

    resolution: int  # pixels, square
    frames: int  # f: frames per clip
    motion_frames: int  # n: previous frames fed back per clip
    fps: int
    left_context: int  # audio frames before a clip its encoder call sees
    lookahead: int  # audio frames after a clip (m: the last frame's right neighbours)
    speed_default: float
    first_motion: str  # "zeros" or "reference": the first clip's motion frames
    face_embedding_dim: int  # 0: the family takes no face embedding
    # How the audio encoder sees the audio (models/config.py AudioConfig.windowing): "clip" windows
    # (bundles made before it was recorded are these), or Hallo's whole "track" in chunks of
    # audio_chunk frames overlapping by audio_chunk_context frames each side
    audio_windowing: str = "clip"
    audio_chunk: int = 0
    audio_chunk_context: int = 0
    # EchoMimic's context windows (runtime/context_windows.py): frames neighbouring windows share and
    # frames the windows move per step; 0 (bundles made before they were recorded): clips only
    context_overlap: int = 0
    context_shift: int = 0
    noise_clamp: float = 0.0  # > 0: the initial noise clipped to +-noise_clamp (EchoMimic's 1.5)
    whisper_positions: int = 0  # whisper (EchoMimic): rows of its positional table, a 30 s segment's states (1500)

    @property
    def samples_per_frame(self) -> int:
        return SAMPLE_RATE // self.fps  # 640 at 25 fps


@dataclass(frozen=True)
class SamplerDefaults:
    """The sampler the bundle runs when none is named, and its noise schedule."""

    family: str
    steps: int
    guidance_scale: float
    guidance_steps: int | None
    prediction_type: str
    spacing: str
    zero_snr: bool
    beta_schedule: str
    set_alpha_to_one: bool


@dataclass(frozen=True)
class Bundle:
    """An opened, checked bundle folder."""

    path: Path
    format: str
    preset: str
    family: str
    emote_version: str
    model: Mapping[str, Any]  # the whole model config (models.config.ModelConfig.from_dict rebuilds it)
    weights: Mapping[str, Any]  # where the weights came from: {"source": "random", "seed": 0}, a checkpoint, ...
    geometry: Geometry
    sampler: SamplerDefaults
    graphs: Mapping[str, GraphSpec]  # by manifest key
    files: Mapping[str, str]  # file name -> sha256
    hash: str
    export_seconds: float | None = None

    @classmethod
    def open(cls, path: str | Path, check_hashes: bool = True) -> Bundle:
        path = Path(path)
        data = read_manifest(path, BUNDLE, READS)
        bundle = _parse(path, data)
        if check_hashes:
            bundle.check_files()
        return bundle

    def check_files(self) -> None:
        for name, sha in self.files.items():
            f = self.path / name
            if not f.is_file():
                raise EmoteError(f"bundle {self.path} is incomplete: {name} is missing")
            if file_sha256(f) != sha:
                raise EmoteError(f"bundle {self.path}: {name} does not match its sha256 in {MANIFEST} (modified or corrupt)")

    @property
    def names(self) -> tuple[str, ...]:
        """The graphs by name (their fp32 entries; variants are '<graph>.<precision>')."""
        return tuple(k for k in self.graphs if "." not in k)

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions the bundle has graphs of: fp32 always, then fp16/int8 where made."""
        extra = sorted({g.precision for g in self.graphs.values()} - {"fp32"})
        return ("fp32", *extra)

    def has(self, name: str, precision: str = "fp32") -> bool:
        return _key(name, precision) in self.graphs

    def graph(self, name: str, precision: str = "fp32") -> GraphSpec:
        """The graph ``name`` at ``precision`` (fp32 graphs are ``name``; others ``name.precision``)."""
        spec = self.graphs.get(_key(name, precision))
        if spec is None:
            if name not in self.graphs:
                raise EmoteError(f"bundle {self.path} has no graph {name!r} (it has: {', '.join(self.names)})")
            raise EmoteError(f"bundle {self.path} has no {precision} {name} graph (it has: {', '.join(self.precisions)})")
        return spec

    def describe(self) -> str:
        """'bundle PATH (preset)': how errors name the bundle."""
        return f"bundle {self.path} ({self.preset})"


def _key(name: str, precision: str) -> str:
    return name if precision == "fp32" else f"{name}.{precision}"


def family_of(model: Mapping[str, Any]) -> str:
    """The model family a config belongs to (bundles of /1 did not record it)."""
    return "hallo" if model.get("uncond_branch") == "hallo" else "emo"


def _parse(path: Path, data: dict) -> Bundle:
    top = _Fields(data, "", path)
    model = top.sub("model")
    audio = model.sub("audio")
    files = top.get("files", dict)
    bhash = top.get("bundle_hash", str)
    if bhash != bundle_hash(files):
        raise EmoteError(f"bundle {path}: {MANIFEST} field bundle_hash does not match its files (edited by hand?): re-export")
    geometry = Geometry(
        resolution=model.get("resolution", int),
        frames=model.get("frames", int),
        motion_frames=model.get("motion_frames", int),
        fps=model.get("fps", int),
        left_context=audio.get("left_context", int),
        # the frames past a clip its audio window holds: wav2vec2's window of neighbours, or whisper's rows
        lookahead=WHISPER_LOOKAHEAD if audio.get("encoder", str, "wav2vec2") == "whisper" else audio.get("window", int),
        speed_default=model.get("speed_default", float),
        first_motion=model.get("first_motion", str),
        face_embedding_dim=model.get("face_embedding_dim", int),
        audio_windowing=audio.get("windowing", str, "clip"),
        audio_chunk=audio.get("chunk", int, 0),
        audio_chunk_context=audio.get("chunk_context", int, 0),
        context_overlap=model.get("context_overlap", int, 0),
        context_shift=model.get("context_shift", int, 0),
        noise_clamp=model.get("noise_clamp", float, 0.0),
        whisper_positions=audio.get("max_source_positions", int, 0) if audio.get("encoder", str, "wav2vec2") == "whisper" else 0,
    )
    if geometry.audio_windowing not in WINDOWINGS:
        raise EmoteError(
            f"bundle {path}: {MANIFEST} field model.audio.windowing is {geometry.audio_windowing!r}: "
            f"this version of emote runs {', '.join(WINDOWINGS)}"
        )
    if geometry.audio_windowing == "track" and not geometry.audio_chunk > 2 * geometry.audio_chunk_context >= 0:
        raise EmoteError(f"bundle {path}: {MANIFEST} fields model.audio.chunk and chunk_context: chunk > 2 x chunk_context >= 0 expected")
    if geometry.fps < 1 or SAMPLE_RATE % geometry.fps:
        raise EmoteError(f"bundle {path}: {MANIFEST} field model.fps is {geometry.fps}: it must divide {SAMPLE_RATE}")
    sampler = SamplerDefaults(
        family=model.get("sampler", str),
        steps=model.get("steps", int),
        guidance_scale=model.get("guidance_scale", float),
        guidance_steps=model.get("guidance_steps", (int, type(None))),
        prediction_type=model.get("prediction_type", str),
        spacing=model.get("timestep_spacing", str),
        zero_snr=model.get("zero_snr", bool),
        beta_schedule=model.get("beta_schedule", str),
        set_alpha_to_one=model.get("set_alpha_to_one", bool),
    )
    family = top.get("family", str, family_of(model.data))
    if family not in FAMILIES:
        raise EmoteError(f"bundle {path}: {MANIFEST} field family is {family!r}: this version of emote runs {', '.join(FAMILIES)}")
    graphs = {}
    for key, entry in top.get("graphs", dict).items():
        g = _Fields(entry, f"graphs.{key}", path)
        file = g.get("file", str)
        if file not in files:
            raise EmoteError(f"bundle {path}: {MANIFEST} graph {key} names {file}, which is not among its files")
        graphs[key] = GraphSpec(
            key=key,
            name=key.split(".", 1)[0],
            precision=g.get("precision", str),
            path=path / file,
            sha256=files[file],
            bundle_hash=bhash,
            inputs=tuple(TensorSpec.read(_Fields(t, f"graphs.{key}.inputs", path)) for t in g.get("inputs", list)),
            outputs=tuple(TensorSpec.read(_Fields(t, f"graphs.{key}.outputs", path)) for t in g.get("outputs", list)),
            quantization=g.get("quantization", dict, None),
        )
    return Bundle(
        path=path,
        format=top.get("format", str),
        preset=top.get("preset", str),
        family=family,
        emote_version=top.get("emote_version", str),
        model=model.data,
        weights=top.get("weights", dict, {"source": "unknown"}),
        geometry=geometry,
        sampler=sampler,
        graphs=graphs,
        files=files,
        hash=bhash,
        export_seconds=top.get("export_seconds", (int, float, type(None)), None),
    )


# -- writing ----------------------------------------------------------------------------------
def graph_entry(
    precision: str,
    file: str,
    inputs: Iterable[TensorSpec | Mapping],
    outputs: Iterable[TensorSpec | Mapping],
    quantization: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One graph's manifest entry, as every writer (export, fp16, int8) records it."""

    def specs(items):
        return [t.to_dict() if isinstance(t, TensorSpec) else dict(t) for t in items]

    entry: dict[str, Any] = {"file": file, "precision": precision, "inputs": specs(inputs), "outputs": specs(outputs)}
    if quantization is not None:
        entry["quantization"] = dict(quantization)
    return entry


def write_new(
    folder: Path,
    *,
    preset: str,
    family: str,
    model: Mapping[str, Any],
    weights: Mapping[str, Any],
    graphs: Mapping[str, Mapping],
    emote_version: str,
    opset: int,
    export_seconds: float,
) -> None:
    """The manifest of a freshly exported bundle in ``folder``: every file there is hashed."""
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    _write(
        folder,
        {
            "format": FORMAT,
            "emote_version": emote_version,
            "preset": preset,
            "family": family,
            "model": dict(model),
            "opset": opset,
            "weights": dict(weights),
            "graphs": {k: dict(v) for k, v in graphs.items()},
            "files": files,
            "export_seconds": export_seconds,
        },
    )


def add_graphs(bundle: Bundle, graphs: Mapping[str, Mapping], hashes: Mapping[str, str]) -> None:
    """Record ``graphs`` (key -> entry) whose files (name -> sha256) are already in the bundle's folder.

    The manifest is rewritten atomically (by rename): until then the old one holds, and a file
    it names that was replaced fails its sha256 check when the bundle is opened.
    """
    data = json.loads((bundle.path / MANIFEST).read_text())
    data["files"].update(hashes)
    for key, entry in graphs.items():
        if entry["file"] not in data["files"]:
            raise EmoteError(f"internal: graph {key} names {entry['file']}, which is not in the bundle")
        data["graphs"][key] = dict(entry)
    if data.get("format") != FORMAT:  # a /1 bundle is rewritten as /2: same model config, no duplicate block
        data.pop("sampler", None)
        data["format"] = FORMAT
        data.setdefault("family", family_of(data["model"]))
    _write(bundle.path, data)


def _write(folder: Path, data: dict) -> None:
    data = {k: v for k, v in data.items() if k != "bundle_hash"}
    data["bundle_hash"] = bundle_hash(data["files"])
    write_atomic(folder / MANIFEST, json.dumps(data, indent=1).encode())


def same_export(folder: Path, *, model: Mapping[str, Any], weights: Mapping[str, Any], emote_version: str) -> bool:
    """Whether the bundle in ``folder`` was exported from this model config, these weights and this emote."""
    try:
        bundle = Bundle.open(folder)
    except EmoteError:
        return False
    as_stored = json.loads(json.dumps(dict(model)))  # tuples become lists in JSON
    return (
        bundle.format == FORMAT
        and dict(bundle.weights) == dict(weights)
        and dict(bundle.model) == as_stored
        and bundle.emote_version == emote_version
    )


def copy_manifest(bundle: Bundle, folder: Path) -> None:
    """The bundle's manifest alone, into ``folder`` (written whole): a record of its geometry, sampler and
    graph tensors without the graph files, which ``Bundle.open(folder, check_hashes=False)`` reads
    (a Triton repository's loop model: its graphs are the repository's other models)."""
    write_atomic(Path(folder) / MANIFEST, (bundle.path / MANIFEST).read_bytes())
