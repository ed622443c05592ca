"""Options shared by the commands that run the model (`ask`, `run`, `bench`), and their meaning.

Each ``*_option()`` returns a fresh typer option to use as a parameter default;
the helpers below turn parsed values into the engine's inputs (PlanRequest,
GenerationOptions, the model path, a loaded Engine). No heavy imports here:
``localcascade --help`` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from localcascade.errors import ModelNotFoundError, UsageError

# --- model and placement ------------------------------------------------------------------------


def model_option():
    return typer.Option(None, "--model", "-m", help="GGUF file or model name (default: the best one pulled).",
                        autocompletion=complete_model_name)


def complete_model_name(incomplete: str) -> list[str]:
    """Tab completion of a model: the catalog's variants and the models on this machine."""
    return _matching(_catalog_names() + stored_model_names(), incomplete)


def complete_pull_model(incomplete: str) -> list[str]:
    """Tab completion of `pull`'s model: auto (the best for this machine), then the catalog's variants
    and the models already here (pulling one again checks it)."""
    return _matching(["auto"] + _catalog_names() + stored_model_names(), incomplete)


def complete_stored_model(incomplete: str) -> list[str]:
    """Tab completion of a model that is on this machine (`rm`)."""
    return _matching(stored_model_names(), incomplete)


def stored_model_names() -> list[str]:
    """The names `localcascade list` shows; none when the store cannot be read.

    Completion runs inside the user's shell on every Tab: a broken index or an unreadable data
    folder must cost the names it would have given, never a traceback at the prompt.
    """
    try:
        from localcascade.store import models as store

        return [model.name for model in store.list_models()]
    except Exception:  # noqa: BLE001 - whatever the store raises, the shell gets the other names
        return []


def _catalog_names() -> list[str]:
    try:
        from localcascade.model.catalog import load_catalog

        return [variant.quant for variant in load_catalog()]
    except Exception:  # noqa: BLE001 - as above: completion never fails in the shell
        return []


def _matching(names: list[str], incomplete: str) -> list[str]:
    """The names starting with what was typed, each once (typer offers the shell only those anyway)."""
    return list(dict.fromkeys(name for name in names if name.startswith(incomplete)))


def ctx_option(default_is: str = "the plan's"):
    return typer.Option(None, "--ctx", help=f"Context length in tokens: 8192, 32K, 1M (default: {default_is}).")


def prefer_option():
    return typer.Option(
        None, "--prefer", help="Recommend by another rule than the machine's: quality (the best quality at "
        "20+ tokens/s), speed (the fastest) or context (the longest context) [default: fully on the GPU first].")


def ngl_option():
    return typer.Option(None, "--ngl", help="Layers on the GPU (default: the plan's).")


def cpu_moe_option():
    return typer.Option(None, "--cpu-moe", help="Keep the expert tensors of the first N layers (not MoE blocks) in system RAM, "
                        "as llama.cpp's --n-cpu-moe; fit's n_cpu_moe is this number.")


def kv_type_option():
    from localcascade.planning.memory import KV_TYPES

    return typer.Option(None, "--kv-type", help=f"KV cache type for K and V: {', '.join(KV_TYPES)}.")


def flash_attn_option():
    return typer.Option(None, "--flash-attn/--no-flash-attn", help="Flash attention (default: the plan's).")


def chat_template_option():
    return typer.Option(None, "--chat-template", help="Jinja chat template FILE to use instead of the model's.")


def verbose_option():
    return typer.Option(False, "--verbose", "-v", help="Show llama.cpp's log on stderr.")


# --- generation ---------------------------------------------------------------------------------


def think_option():
    return typer.Option(True, "--think/--no-think", help="Let the model reason before answering.")


def think_budget_option():
    return typer.Option(None, "--think-budget", help="At most N thinking tokens, then the model must answer.")


def system_option():
    return typer.Option(None, "--system", "-s", help="System prompt.", callback=_utf8_text)


def _utf8_text(value: Optional[str]) -> Optional[str]:
    """Reject text the shell handed over as undecodable bytes (Python keeps them as surrogates)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise typer.BadParameter("not UTF-8 text") from None
    return value


def temp_option():
    return typer.Option(None, "--temp", help="Sampling temperature (default: the model card's; 0 = greedy).")


def top_p_option():
    return typer.Option(None, "--top-p", help="Nucleus sampling threshold (default: the model card's).")


def top_k_option():
    return typer.Option(None, "--top-k", help="Keep only the K most likely tokens before top-p (default: the "
                        "model card's, none; 0 = none).")


def max_tokens_option():
    return typer.Option(None, "--max-tokens", help="At most N generated tokens, thinking included.")


DRAFT_MODES = ("auto", "ngram", "none")


def draft_option():
    return typer.Option(
        "auto", "--draft", metavar="auto|ngram|none",
        help="Guess the next tokens from the prompt and the reply so far and verify them in one step "
             "(faster where text repeats); 'none' decodes token by token; 'auto': ngram where the plan "
             "keeps the model's experts on the GPU or it has none.")


def seed_option():
    return typer.Option(None, "--seed", help="Random seed, for reproducible replies.")


# --- turning values into engine inputs -----------------------------------------------------------


def plan_request(
    *,
    ctx: Optional[str] = None,
    ngl: Optional[int] = None,
    cpu_moe: Optional[int] = None,
    kv_type: Optional[str] = None,
    flash_attn: Optional[bool] = None,
    think: bool = True,
    prefer: Optional[str] = None,
    draft: str = "none",
):
    """The user's placement overrides as a PlanRequest (the planner checks they fit); ``think``
    sets the context floor of the default plan, ``prefer`` the policy's rule."""
    from localcascade.planning.plan import PlanRequest
    from localcascade.units import parse_tokens

    if ngl is not None and ngl < 0:
        raise UsageError(f"--ngl must be >= 0, got {ngl}")
    if cpu_moe is not None and cpu_moe < 0:
        raise UsageError(f"--cpu-moe must be >= 0, got {cpu_moe}")
    if kv_type is not None:
        from localcascade.planning.memory import KV_TYPES

        if kv_type.lower() not in KV_TYPES:
            raise UsageError(f"--kv-type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        kv_type = kv_type.lower()
    from localcascade.planning.policy import check_preference

    if draft not in DRAFT_MODES:
        raise UsageError(f"--draft must be one of {', '.join(DRAFT_MODES)}, got {draft!r}")
    from localcascade.planning.plan import DRAFT_TOKENS

    return PlanRequest(
        draft_tokens={"auto": None, "ngram": DRAFT_TOKENS, "none": 0}[draft],
        n_ctx=parse_tokens(ctx) if ctx is not None else None,
        think=think,
        prefer=check_preference(prefer),
        type_k=kv_type,
        type_v=kv_type,
        flash_attn=flash_attn,
        n_gpu_layers=ngl,
        n_cpu_moe=cpu_moe,
    )


def generation_options(
    *,
    think: bool = True,
    think_budget: Optional[int] = None,
    temp: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    max_tokens: Optional[int] = None,
    seed: Optional[int] = None,
):
    """The flags' GenerationOptions; it checks its own limits (engine/options.py) and cli/wording
    names the flag in the OptionError."""
    from localcascade.engine.session import GenerationOptions

    return GenerationOptions(
        think=think, think_budget=think_budget, temperature=temp, top_p=top_p, top_k=top_k, max_tokens=max_tokens,
        seed=seed,
    )


def read_grammar_file(path: Path) -> str:
    """The text of a ``--grammar-file``; an empty file would silently constrain nothing."""
    from localcascade import safe_io

    # A pipe (`--grammar-file <(cmd)`) is read too; a device, folder or endless file is refused.
    text = safe_io.read_text_input(path, what="grammar file", limit=safe_io.GRAMMAR_MAX_BYTES)
    if not text.strip():
        raise UsageError(f"grammar file {path} is empty: it would constrain nothing (GBNF expected)")
    from localcascade.engine.grammar import check

    check(text, f"grammar file {path}")   # before the model loads; the engine checks again before C code
    return text


def open_model(
    spec: Optional[str],
    request,
    *,
    how: str = "--model NAME|FILE",
    hardware=None,
    before_load: Optional[Callable] = None,
    chat_template: Optional[Path] = None,
    verbose: bool = False,
    show_progress: bool = True,
    for_chat: bool = True,
    grammar: Optional[str] = None,
    threads: Optional[int] = None,
    for_tools: bool = False,
):
    """The one way ask, run, serve and bench open a model: choose it (``resolve.opening``: the file,
    the machine probed once, the plan), let the command show the plan (``before_load(plan)``),
    then load it with its progress on stderr. Returns (choice, engine).

    ``how`` is how the command takes a model (``--model NAME|FILE``, ``bench NAME|FILE``), for the
    error when none is named and none can be picked. ``for_chat`` (``grammar``, ``for_tools``) have the
    engine check the template (the grammar, the tool-call tokens) first.
    """
    from localcascade.cli.progress import load_progress
    from localcascade.engine.template import read_template_file
    from localcascade.resolve.opening import choose_model, open_model as load
    from localcascade.resolve.resolver import NoDefaultModelError

    template_text = read_template_file(chat_template) if chat_template is not None else None
    try:
        choice = choose_model(spec, request, hardware=hardware)
    except NoDefaultModelError as err:
        if err.present:
            # Only catalog variants are picked by default; the others must be named.
            names = ", ".join(err.present[:3]) + (", ..." if len(err.present) > 3 else "")
            raise ModelNotFoundError(
                f"no Nemotron-Cascade-2 catalog variant is pulled, so none is picked by default: "
                f"name one of the models `localcascade list` shows ({names}) with {how}"
            ) from None
        raise ModelNotFoundError(f"no model pulled yet: run `localcascade pull` or give {how}") from None
    if before_load is not None:
        before_load(choice.plan)
    with load_progress(choice.path.name, show=show_progress) as progress:
        engine = load(choice, chat_template=template_text, verbose=verbose, progress=progress, for_chat=for_chat,
                      grammar=grammar, threads=threads, for_tools=for_tools)
    return choice, engine
