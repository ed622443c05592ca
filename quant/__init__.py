"""Local quantization through llama.cpp's quantizer, as a library (no CLI, no terminal output).

    from quant.quantize import dry_run, prepare, quantize
    plan = dry_run("model-BF16.gguf", "Q4_K_M")   # predicted size, nothing written
    result = quantize("model-BF16.gguf", "model-Q4_K_M.gguf", "Q4_K_M")

    with prepare("model-BF16.gguf", "Q4_K_M") as job:   # one llama.cpp process for both steps
        print(job.plan.predicted_bytes)
        result = job.run("model-Q4_K_M.gguf", progress=lambda done, total, tensor: ...)

Like every package face here, this file imports nothing: importing ``quant.quantize`` runs it first.
"""
