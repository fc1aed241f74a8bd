"""tinykg: train knowledge-graph recommenders with 1/2/4/8-bit compressed activations."""

from .compress import CompressionConfig, compress_saved_tensors, dequantize, quantize

__version__ = "0.1.0"
__all__ = ["CompressionConfig", "compress_saved_tensors", "dequantize", "quantize", "__version__"]
