"""The clip loop as a Triton Python-backend model (`emote export-triton` copies this file as emote_video/1/model.py).

Decoupled: one request (a portrait and a whole audio track) gets one response per clip
(``frames``: that clip's kept frames, watermarked; ``first_frame``: its first frame's index),
then a final empty one flagged TRITONSERVER_RESPONSE_COMPLETE_FINAL; a failure is one error
response, also final. The loop itself is ``emote.runtime.graph_loop.GraphLoop`` (the emote
package must be installed in the server's Python): this file only turns each graph call
into a BLS request to that graph's model (``graph.<name>`` parameters of config.pbtxt) and
the request's tensors into the loop's arguments. It runs inside Triton only: nothing here
is imported by the emote package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from emote.bundle import Bundle
from emote.errors import EmoteError
from emote.provenance.payload import Payload
from emote.provenance.watermark import Embedder, Key
from emote.runtime.face import prepare_portrait
from emote.runtime.families import family_for
from emote.runtime.graph_loop import GraphLoop
from emote.runtime.pipeline import sampler_table

HERE = Path(__file__).resolve().parent  # the model's version folder: bundle/ holds the manifest


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.bundle = Bundle.open(HERE / "bundle", check_hashes=False)  # its graphs are the repository's models
        self.models = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("graph.")}
        table = sampler_table(self.bundle, params["sampler"], int(params["steps"]))
        self.family = family_for(self.bundle)
        self.loop = GraphLoop.for_precision(self.bundle, params["precision"], table, self.family, self._run)
        self.outputs = {g: [t.name for t in spec.outputs] for g, spec in self.loop.specs.items()}
        self.key = Key.default()  # $EMOTE_WATERMARK_KEY of the server, else the public key

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._video(request, sender)
            except EmoteError as e:  # the client's mistake: said in one line
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
            except Exception as e:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _video(self, request, sender) -> None:
        def tensor(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        inputs = {}
        for name in self.family.inputs:
            value = tensor(name)
            if value is not None:
                inputs[name] = float(value.reshape(-1)[0]) if name == "speed" else value
        seed, box = tensor("seed"), tensor("face_box")
        portrait = prepare_portrait(tensor("image"), self.bundle.geometry.resolution, None if box is None else tuple(int(v) for v in box))
        marker = Embedder(self.key, Payload.now())
        first = 0
        for frames in self.loop.stream(portrait, tensor("audio"), seed=0 if seed is None else int(seed[0]), marker=marker, **inputs):
            if sender.is_cancelled():
                return
            out = [pb_utils.Tensor("frames", frames), pb_utils.Tensor("first_frame", np.array([first], np.int64))]
            sender.send(pb_utils.InferenceResponse(output_tensors=out))
            first += len(frames)

    def _run(self, graph, feeds):
        """One graph call as a BLS request to its model; outputs on the host."""
        request = pb_utils.InferenceRequest(
            model_name=self.models[graph],
            requested_output_names=self.outputs[graph],
            inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.models[graph]}: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in self.outputs[graph]}
