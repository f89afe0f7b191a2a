"""Benchmarks side by side: this server, Roboflow Inference and raw ONNX Runtime (issue 6).

``python -m benchmarks <workload> [options]``; see :mod:`benchmarks.__main__` and the README.
"""
