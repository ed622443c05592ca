"""The built-in catalog: what the planner is told about files nobody has downloaded."""

import json
from importlib.resources import files

import pytest

from localcascade.model.catalog import find_variant, load_catalog
from localcascade.errors import ModelNotFoundError


def _raw(quant: str) -> dict:
    return json.loads(files("localcascade.profiles").joinpath("variants", f"{quant}.json").read_text())


def _header_bytes(raw: dict) -> int:
    """The derived file's bytes outside its tensor data (metadata, tokenizer, tensor infos)."""
    return raw["derived_from"]["derived_file_bytes"] - sum(t[3] for t in raw["tensors"])


def test_a_published_file_larger_than_the_derived_one_is_planned_at_its_real_size():
    raw = _raw("Q4_K_M")
    variant = find_variant("Q4_K_M")
    assert raw["derived_from"]["derived_file_bytes"] < variant.size_bytes  # bartowski's imatrix file is larger
    planned = variant.facts.file_tensor_bytes + _header_bytes(raw)
    assert planned == pytest.approx(variant.size_bytes, abs=64 * 1024)
    unquantized = {t[0]: t[3] for t in raw["tensors"] if t[1] in ("F32", "F16", "BF16")}
    assert all(t.n_bytes == unquantized[t.name] for t in variant.facts.tensors if t.name in unquantized)


def test_a_published_file_smaller_than_the_derived_one_keeps_the_derived_sizes():
    raw = _raw("IQ4_XS")
    variant = find_variant("IQ4_XS")
    assert variant.size_bytes < raw["derived_from"]["derived_file_bytes"]
    assert [t.n_bytes for t in variant.facts.tensors] == [t[3] for t in raw["tensors"]]


def test_the_catalog_lists_every_variant_best_first_and_names_are_case_insensitive():
    assert [v.quant for v in load_catalog()] == ["BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"]
    assert find_variant("q4_k_m").quant == "Q4_K_M"
    with pytest.raises(ModelNotFoundError, match="known: BF16, Q8_0"):
        find_variant("Q3_K_S")
