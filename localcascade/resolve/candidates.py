"""The models a plan chooses between, each with the facts it is planned from.

A catalog variant not downloaded is planned from the catalog's derived facts; one already
downloaded, a registered file or a hub file from its own GGUF header, which is exact. Which
variants are downloaded the caller says (the resolver asks the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from localcascade.model.catalog import find_variant, load_catalog
from localcascade.model.gguf_header import read_header
from localcascade.model.facts import ModelFacts, facts_from_header


@dataclass(frozen=True)
class Candidate:
    """One model to plan: its name, facts, quality rank (lower is better) and where the facts came from."""

    quant: str
    facts: ModelFacts
    file_bytes: int
    source: str           # "catalog" or "header"
    quality_rank: int = 99
    path: str | None = None  # the header's file (local path or hf:// URI), when source == "header"


def header_candidate(source: str, label: str, quant: str | None, quality_rank: int | None = None) -> Candidate:
    """A model planned from the header at ``source`` (a local path or hf:// URI)."""
    header = read_header(source)
    size = header.file_bytes or header.tensor_bytes
    # Without a catalog rank, the bigger file of one model is the one with more bits per weight.
    return Candidate(quant or label, facts_from_header(header), size, "header",
                     -size if quality_rank is None else quality_rank, path=source)


def catalog_candidates(only: str | None = None, *, pulled: Mapping[str, Path] | None = None,
                       pulled_only: bool = False) -> list[Candidate]:
    """Catalog variants (or the one called ``only``), best first. ``pulled`` maps the variants
    already downloaded to their file, each then planned from its own header; ``pulled_only``
    keeps just those."""
    pulled = pulled or {}
    variants = [find_variant(only)] if only else list(load_catalog())
    return [header_candidate(str(pulled[v.quant]), v.quant, v.quant, v.quality_rank) if v.quant in pulled
            else Candidate(v.quant, v.facts, v.size_bytes, "catalog", v.quality_rank)
            for v in variants if v.quant in pulled or not pulled_only]
