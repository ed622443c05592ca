"""`localcascade quantize SRC --to TYPE`: make a variant locally from a BF16/F16/F32 GGUF.

The predicted size (llama.cpp's dry run) and progress go to stderr; the line
naming the finished file goes to stdout. The result is registered in the store
under its file name, so `run`, `ask` and `fit` take it by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from localcascade.cli.app import app
from localcascade.cli.options import complete_stored_model
from localcascade.errors import LocalCascadeError, OutputPathError
from localcascade.model.spec import model_stem
from localcascade.units import format_bytes
from localcascade.stderr import say


@app.command()
def quantize(
    src: str = typer.Argument(..., help="Source GGUF (BF16/F16/F32; any shard of a split set), or a stored model.",
                              autocompletion=complete_stored_model),
    to: str = typer.Option(..., "--to", "-t", help="Target type: IQ4_XS, Q4_K_M, Q5_K_M, Q6_K, Q8_0, ..."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: next to SRC, named for TYPE)."),
    imatrix: Optional[Path] = typer.Option(None, "--imatrix", help="Importance-matrix file (llama-imatrix output)."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Accept an already-quantized source."),
    keep_split: bool = typer.Option(False, "--keep-split", help="Split output like the split source."),
    name: Optional[str] = typer.Option(None, "--name", help="Name to register it under (default: the file's)."),
    threads: int = typer.Option(0, "--threads", help="Quantizer threads (0 = all cores; at most 4 per core)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file and registered name."),
) -> None:
    """Quantize a GGUF with llama.cpp's quantizer, check the result, and add it to the store."""
    from localcascade.cli.progress import QuantizeProgress
    from localcascade.resolve.resolver import resolve
    from localcascade.store import models as store
    from quant.quantize import check_destination, check_threads, prepare, publish_outputs
    from quant.targets import normalize_target

    # Everything that can be refused is refused here, before llama.cpp's dry run and the work.
    target = normalize_target(to)
    check_threads(threads)
    source = resolve(src, need="file").path.absolute()
    store.check_writable()  # the result is registered at the end
    dst = (out or _default_out(source, target)).expanduser()
    finals = check_destination(source, dst, keep_split=keep_split, overwrite=force)
    register_as = name or _name_for(finals[0])
    replaced = store.check_new_name(register_as, replace=force)
    if replaced is not None and replaced.missing:
        # Decided now, not after the work: a record whose file is gone names nothing, so the new file takes it.
        say(f"note: {register_as} was registered to {replaced.path}, which is gone; it will name the new file",
            prefix=False)
    _refuse_other_models_files(finals, register_as)
    done: dict = {}

    def publish(result, finals: list[Path]) -> None:
        # One lock across the last checks, the rename and the record: two runs to the same --out
        # take turns here, so the file and the index always describe the same result.
        with store.publishing():
            store.check_new_name(register_as, replace=force)
            _refuse_other_models_files(finals, register_as)
            publish_outputs(list(result.outputs), finals, overwrite=force)
            try:
                done["model"] = store.register_local(
                    register_as, finals, quant=target, source=str(source), replace=force,
                    check="loaded in llama.cpp, tensor types as planned" if result.loaded
                    else "tensor types as planned",
                )
            except LocalCascadeError as err:
                done["error"] = err

    with prepare(source, target, imatrix=imatrix, allow_requantize=allow_requantize) as job:
        say(f"{source.name} -> {target}: predicted {format_bytes(job.plan.predicted_bytes)} "
            f"(from {format_bytes(job.plan.source_bytes)})", prefix=False)
        with QuantizeProgress(target) as progress:
            result = job.run(dst, keep_split=keep_split, nthread=threads, progress=progress, overwrite=force,
                             publish=publish)
    for warning in result.warnings:
        say(f"note: {warning}", prefix=False)
    if "error" in done:
        # The store changed since the check above (a remount, a broken index): the file is
        # complete and checked, so say where it is rather than only why it has no name.
        raise LocalCascadeError(f"wrote {result.path}, but could not register it as {register_as}: "
                                f"{done['error']}; use it by its path")
    registered = done["model"]
    if replaced is not None and not replaced.missing and not set(replaced.files) & set(result.outputs):
        say(f"note: {register_as} now names {result.path}; {replaced.path}, which it named before, "
            "is kept but no longer registered", prefix=False)
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.histogram.items(), key=lambda kv: -kv[1]))
    say(f"wrote {result.path} ({format_bytes(result.output_bytes)}; {types})", prefix=False)
    typer.echo(f"{registered.name}\t{format_bytes(result.output_bytes)}\t{result.path}")


def _refuse_other_models_files(finals: list[Path], register_as: str) -> None:
    """--force replaces a file, never silently another model: a file the store knows under another
    name is refused (its registration would otherwise vanish with its content)."""
    from localcascade.store import models as store

    for final in finals:
        if final.exists():
            owner = store.owner_of(final)
            if owner is not None and owner.name != register_as:
                raise OutputPathError(f"{final} is the file of the model {owner.name}; remove it first "
                                      f"(localcascade rm {owner.name}) or choose another --out")


def _default_out(source: Path, target: str) -> Path:
    """model-BF16.gguf -> model-Q4_K_M.gguf (anything else gets -TYPE appended), next to the source -
    or in localcascade's own models folder when the source is in the Hugging Face cache, which
    belongs to the hub's snapshots."""
    from localcascade import settings

    folder = source.parent
    try:
        source.absolute().relative_to(settings.hf_hub_cache().absolute())
        folder = settings.data_dir() / "models"
    except ValueError:
        pass
    else:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputPathError(f"cannot create {folder} for the output: {err.strerror or err}; "
                                  "choose the output file with --out") from None
    stem = model_stem(source.name)
    renamed = re.sub(r"(?i)(?<![A-Za-z0-9])(BF16|F16|F32)(?![A-Za-z0-9])", target, stem)
    return folder / ((renamed if renamed != stem else f"{stem}-{target}") + ".gguf")


def _name_for(path: Path) -> str:
    return model_stem(path.name)

