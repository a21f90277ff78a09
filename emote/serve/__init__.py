"""`emote serve`: live sessions of the runtime over HTTP and WebSocket (docs/serving.md).

The runtime's ``LiveSession`` does the media; this layer adds the network: sessions with
tokens and admission, the wire format, watchdogs and metrics. It imports the runtime,
never torch or the export side.
"""
