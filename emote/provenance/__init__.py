"""Provenance: every video emote makes is marked as generated (watermark.py, payload.py, manifest.py) and can be checked (detect.py).

Numpy, OpenCV and c2pa-python only: never torch or the model.
"""
