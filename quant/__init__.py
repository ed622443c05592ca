"""Local quantization through llama.cpp's quantizer, as a library (no CLI, no terminal output).

    import quant
    plan = quant.dry_run("model-BF16.gguf", "Q4_K_M")   # predicted size, nothing written
    result = quant.quantize("model-BF16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")

    with quant.prepare("model-BF16.gguf", "Q4_K_M") as job:   # one llama.cpp process for both steps
        print(job.plan.predicted_bytes)
        result = job.run("model-Q4_K_M.gguf", progress=lambda done, total, tensor: ...)
"""

from quant.quantize import (DryRun, Quantization, QuantResult, check_destination, dry_run, prepare, publish_outputs,
                            quantize)
from quant.targets import MAIN_TYPE, normalize_target

TARGETS = tuple(MAIN_TYPE)

__all__ = ["DryRun", "Quantization", "QuantResult", "TARGETS", "check_destination", "dry_run", "normalize_target",
           "prepare", "publish_outputs", "quantize"]
