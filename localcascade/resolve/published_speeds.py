"""Published measurements held against the speed model: each report's figure beside what `fit`
predicts for the same card, variant and placement. Pure besides reading the shipped data file
(profiles/published_speeds.json); docs/performance.md prints the table, and
tests/test_speed_published.py holds the model to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources

from localcascade.model.catalog import find_variant
from localcascade.hardware.facts import Hardware
from localcascade.hardware.profiles import load_profile
from localcascade.planning.memory import Placement
from localcascade.model.facts import ModelFacts
from localcascade.planning.placement import speed_of

# Beyond this the central estimate is "off" and the table says why (the threshold).
OFF_BY = 0.30


@dataclass(frozen=True)
class Comparison:
    id: str
    card: str
    model: str
    stand_in: str
    placement: str           # in words: "all on the GPU", "28 layers on the GPU", "13 MoE blocks in RAM"
    published: tuple[float, float]
    predicted: float         # the central estimate
    low: float               # the range `fit` claims
    high: float
    source: str
    what_it_says: str
    prompt_published: float | None = None
    prompt_predicted: float | None = None
    prompt_low: float | None = None
    prompt_high: float | None = None

    @property
    def published_mid(self) -> float:
        return sum(self.published) / 2

    @property
    def off(self) -> float:
        """The central estimate over the published figure, less one: +0.25 is 25% too fast."""
        return self.predicted / self.published_mid - 1

    @property
    def within_range(self) -> bool:
        """Some of the published figure lies inside the range `fit` states."""
        return self.published[1] >= self.low * 0.995 and self.published[0] <= self.high * 1.005

    @property
    def prompt_within_range(self) -> bool:
        return self.prompt_published is None or self.prompt_low * 0.995 <= self.prompt_published <= self.prompt_high * 1.005


@lru_cache(maxsize=1)
def measurements() -> tuple[dict, ...]:
    text = resources.files("localcascade.profiles").joinpath("published_speeds.json").read_text(encoding="utf-8")
    return tuple(json.loads(text)["measurements"])


def _hardware(spec: dict) -> Hardware:
    hw = load_profile(spec["profile"])
    if spec.get("gpus", 1) > 1:
        hw = replace(hw, gpus=tuple(replace(hw.gpus[0], index=i) for i in range(spec["gpus"])))
    if "cpu_cores" in spec:
        hw = replace(hw, cpu=replace(hw.cpu, physical_cores=spec["cpu_cores"]))
    if "ram_bandwidth_bytes_per_s" in spec:
        hw = replace(hw, ram_bandwidth_bytes_per_s=float(spec["ram_bandwidth_bytes_per_s"]))
    return hw


def _scaled(facts: ModelFacts, file_bytes: int | None) -> ModelFacts:
    """The stand-in's tensors grown or shrunk evenly to the reported file's size."""
    if not file_bytes:
        return facts
    ratio = file_bytes / sum(t.n_bytes for t in facts.tensors)
    return replace(facts, tensors=tuple(replace(t, n_bytes=int(t.n_bytes * ratio)) for t in facts.tensors))


def _placement(facts: ModelFacts, spec: dict, n_gpus: int) -> Placement:
    ngl = spec.get("n_gpu_layers")
    kv = spec.get("type_k", "f16")
    return Placement(n_ctx=spec["n_ctx"], n_gpu_layers=facts.n_layer + 1 if ngl is None else ngl,
                     n_cpu_moe=spec.get("n_cpu_moe", 0), type_k=kv, type_v=kv, n_gpus=n_gpus)


def _words(facts: ModelFacts, p: Placement) -> str:
    if p.n_gpu_layers <= facts.n_layer:
        return f"{p.n_gpu_layers} of {facts.n_layer + 1} layers on the GPU"
    blocks = len([layer for layer in facts.moe_layers if layer < p.n_cpu_moe])
    return f"{blocks} MoE blocks in RAM" if blocks else "all on the GPU"


def compare(measurement: dict) -> Comparison:
    hw = _hardware(measurement["hardware"])
    variant = find_variant(measurement["stand_in"])
    facts = _scaled(variant.facts, measurement.get("file_bytes"))
    p = _placement(facts, measurement["placement"], len(hw.gpus))
    speed = speed_of(facts, p, hw)
    low, high = measurement["generation_tokens_per_s"]
    return Comparison(
        id=measurement["id"], card=measurement["card"], model=measurement["model"], stand_in=variant.quant,
        placement=_words(facts, p), published=(float(low), float(high)), predicted=speed.generation,
        low=speed.generation_low, high=speed.generation_high, source=measurement["source"],
        what_it_says=measurement["what_it_says"], prompt_published=measurement.get("prompt_tokens_per_s"),
        prompt_predicted=speed.prompt, prompt_low=speed.prompt_low, prompt_high=speed.prompt_high)


def comparisons() -> list[Comparison]:
    return [compare(m) for m in measurements()]


def markdown_table(rows: list[Comparison]) -> list[str]:
    """The comparison as docs/performance.md prints it."""
    lines = ["| card | model (planned as) | placement | published t/s | `fit` estimate (range) | off | "
             "prompt t/s: published, `fit` |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for c in rows:
        published = f"{c.published[0]:.0f}" if c.published[0] == c.published[1] else \
            f"{c.published[0]:.0f}-{c.published[1]:.0f}"
        lines.append(f"| {c.card} | {c.model} ({c.stand_in}) | {c.placement} | {published} | "
                     f"~{c.predicted:.0f} ({c.low:.0f}-{c.high:.0f}) | {c.off:+.0%} | "
                     + (f"{c.prompt_published:.0f}, ~{c.prompt_predicted:.0f} ({c.prompt_low:.0f}-{c.prompt_high:.0f}) |"
                        if c.prompt_published else "- |"))
    return lines
