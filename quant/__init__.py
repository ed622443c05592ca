"""Local quantization through llama.cpp's quantizer, as a library (no CLI, no terminal output).

    import quant
    plan = quant.dry_run("model-BF16.gguf", "Q4_K_M")   # predicted size, nothing written
    result = quant.quantize("model-BF16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")
"""

from quant.quantize import DryRun, QuantResult, dry_run, quantize
from quant.targets import MAIN_TYPE, normalize_target

TARGETS = tuple(MAIN_TYPE)

__all__ = ["DryRun", "QuantResult", "TARGETS", "dry_run", "normalize_target", "quantize"]
