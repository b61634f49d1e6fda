"""onnxprune: structured channel pruning of CNNs given only as ONNX files."""

__version__ = "0.1.0"
