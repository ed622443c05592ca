"""Getting a model onto this machine: recommend, confirm, pull. `pull` and `run` both come here.

``recommend_and_fetch`` lets the policy pick the catalog variant that fits the machine best, shows
the plan (from the real file's header on the hub when it answers), asks, and downloads it.
``fetch`` downloads a model already named, resuming and verifying it.

One rule for the question, whoever asks it: ``--yes`` never asks; a terminal is asked, Enter
meaning yes; without a terminal on stdin (a script, a pipe, cron) nobody can answer, and the
download goes ahead, as ``ollama pull`` and ``ollama run`` fetch what they are told to without
asking: the command itself was the request. A line on stderr says so, so a log shows why.

Questions, plans and progress go to stderr; the caller decides what reaches stdout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from localcascade.cli.wording import alternative_words, error_line, plan_line, plan_speed_reason, reason_words
from localcascade.errors import LocalCascadeError, ModelNotFoundError
from localcascade.model.spec import HubFile
from localcascade.units import format_bytes, format_tokens
from localcascade.stderr import say



@dataclass(frozen=True)
class Fetched:
    """A model that is on this machine now."""

    name: str              # as `localcascade list` names it
    path: Path             # its (first) file
    size: int
    check: str | None      # "sha256 verified" / "no published sha256 to check"; None: not checked (offline)

    def summary(self) -> str:
        """`pull`'s line on stdout: NAME, SIZE, the check when there was one, PATH, tab-separated."""
        return "\t".join([self.name, format_bytes(self.size), *([self.check] if self.check else []), str(self.path)])


def confirm_download(question: str, yes: bool, *, later: str) -> None:
    """The one rule (see the module doc). ``later`` is the command that downloads it another time."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        say("(no terminal to ask on: downloading, as with --yes)")
        return
    if not typer.confirm(question, default=True, err=True):
        raise ModelNotFoundError(f"nothing downloaded: `{later}` downloads it later")


def recommend_and_fetch(hardware, request, *, yes: bool) -> Fetched:
    """The catalog variant that fits ``hardware`` best for ``request``: shown, confirmed, downloaded."""
    from localcascade.model.catalog import load_catalog
    from localcascade.errors import DoesNotFitError
    from localcascade.planning.policy import recommend

    try:
        choice = recommend(hardware, load_catalog(), request)
    except DoesNotFitError as err:
        raise DoesNotFitError(f"no variant to recommend: {error_line(err)} (`localcascade fit` shows what each variant "
                              "needs; a file you have runs with --model FILE)") from None
    variant = choice.variant
    plan = _plan_from_remote_header(variant, hardware, request) or choice.plan
    size = format_bytes(variant.size_bytes)
    say(f"best for this machine: {variant.quant} ({size}) from {variant.repo}")
    say(f"  {plan_line(plan)}", prefix=False)
    # How the policy chose among the variants (a plan re-made from the hub's header already says it for one).
    chose = tuple(note for note in choice.notes if note not in plan.reasons)
    reasons = [reason_words(r) for r in plan.reasons] + ([plan_speed_reason(plan)] if plan.tokens_per_s else [])
    for reason in reasons + [reason_words(r) for r in chose]:
        say(f"  - {reason}", prefix=False)
    for alternative in choice.alternatives:   # each with what it trades and the command that gets it
        how = (f"localcascade run --ctx {format_tokens(alternative.plan.n_ctx)}"
               if alternative.variant.quant == variant.quant else f"localcascade pull {alternative.variant.quant}")
        say(f"  alternative, {alternative_words(alternative, alternative.variant.quant)} (`{how}`)", prefix=False)
    confirm_download(f"Download {variant.quant} ({size})?", yes, later=f"localcascade pull {variant.quant}")
    return fetch(variant.quant)


def fetch(spec: str, hardware=None, request=None) -> Fetched:
    """Download the model ``spec`` names into the Hugging Face cache, resuming and verifying.

    With ``hardware``, the file's header is read from the hub first and its plan shown: a file
    llama.cpp could not use is refused before its bytes are fetched. With HF_HUB_OFFLINE=1 the
    cached copy is the answer, or there is none (the resolver says which).
    """
    from localcascade.hub import download as hub
    from localcascade.resolve.resolver import resolve

    found = resolve(spec, need="remote")
    ref, remote, stored = found.ref, found.remote, found.stored
    if remote is None:  # offline, and it is here
        say(f"{stored.name} is already here (offline: not checked against the hub)")
        return Fetched(stored.name, Path(stored.path), stored.size, None)
    shards = f" in {len(remote.files)} files" if len(remote.files) > 1 else ""
    say(f"{ref.label}: {remote.repo}, {format_bytes(remote.size)}{shards}")
    if hardware is not None:
        _check_before_download(remote, hardware, request)
    try:
        from localcascade.cli.progress import DownloadProgress

        progress = DownloadProgress(ref.label)
        with progress:
            pulled = hub.pull(remote, on_start=progress.start, on_bytes=progress.advance)
    except KeyboardInterrupt:
        from localcascade.errors import Interrupted

        raise Interrupted(f"interrupted: `localcascade pull {spec}` again continues where this stopped") from None
    if pulled.resumed_bytes:
        say(f"continued an interrupted download ({format_bytes(pulled.resumed_bytes)} were already here)")
    elif not pulled.downloaded_bytes:
        say("already downloaded")
    report_unrecorded(pulled)
    check = "sha256 verified" if all(f.verified for f in pulled.files) else "no published sha256 to check"
    return Fetched(ref.spec if ref.kind == "variant" else ref.label, pulled.path, pulled.size, check)


def report_unrecorded(pulled) -> None:
    """The download is complete whatever the store index says: a record that could not be kept
    (read-only LOCALCASCADE_HOME, a broken index) is a note, after which the model is still used."""
    for reason in pulled.notes:
        say(f"note: the download is complete ({pulled.path}), but its check could not be recorded: {reason}; "
             "`localcascade list` shows it as not verified and the next pull checks it again")


def plan_for_header(header, hardware, request=None):
    """(the plan for a model's header on ``hardware``, None) or (None, why there is none)."""
    from localcascade.planning.plan import PlanRequest
    from localcascade.planning.policy import plan_for_model

    try:
        return plan_for_model(header, hardware, request or PlanRequest()), None
    except LocalCascadeError as err:
        return None, error_line(err)


def _check_before_download(remote, hardware, request) -> None:
    """Read the file's header from the hub first (a few MB of range requests): a file llama.cpp
    cannot use is refused before its gigabytes are fetched, and the user sees how it would fit."""
    from localcascade.errors import GGUFHeaderError
    from localcascade.model.gguf_header import read_header

    try:
        header = read_header(HubFile(remote.repo, remote.revision, remote.files[0].path).uri)
    except GGUFHeaderError as err:
        raise GGUFHeaderError(f"{err}; nothing was downloaded") from None
    except LocalCascadeError as err:  # the hub would not answer a range request: the download decides
        say(f"  (the header could not be read first: {err})", prefix=False)
        return
    plan, plan_error = plan_for_header(header, hardware, request)
    say(f"  {plan_line(plan)}" if plan is not None else f"  warning: {plan_error}", prefix=False)


def _plan_from_remote_header(variant, hardware, request):
    """The plan from the real file's header, read with range requests; None when the hub does not answer."""
    from localcascade import settings

    if settings.hub_offline():
        return None
    try:
        from localcascade.model.gguf_header import read_header
        from localcascade.planning.policy import plan_for_model

        header = read_header(HubFile(variant.repo, None, variant.files[0]).uri)
        return plan_for_model(header, hardware, request)
    except LocalCascadeError as err:
        say(f"(planning from catalog facts: {error_line(err)})")
        return None
