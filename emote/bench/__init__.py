"""`emote bench`: latency users can trust, with the fidelity it was bought at.

flops.py   FLOPs of a graph, counted from its ONNX (MatMul, Gemm, Conv)
peak.py    the machine's peak, measured in the same run by one GEMM per backend and precision
variants.py the runs compared: the PyTorch reference and the runtime's settings
run.py     interleaved runs, honest clocks, statistics
report.py  JSON (every sample), Markdown table, PNG plot
"""
