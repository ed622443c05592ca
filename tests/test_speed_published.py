"""The speed model held against published measurements (profiles/published_speeds.json).

Each report's figure must lie inside the range `fit` states for the same card, variant and
placement; where the central estimate is off by more than 30%, the data must say why, and the
table in docs/performance.md must be the one the model prints now.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from localcascade.resolve.published_speeds import OFF_BY, comparisons, markdown_table, measurements

ROOT = Path(__file__).resolve().parent.parent
ROWS = comparisons()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_every_published_figure_lies_in_the_range_fit_states(row):
    assert row.low <= row.predicted <= row.high
    assert row.within_range, (f"{row.card} {row.model}: published {row.published}, fit says "
                              f"{row.low:.0f}-{row.high:.0f}")
    assert row.prompt_within_range, f"{row.card}: prompt {row.prompt_published}, fit says {row.prompt_low:.0f}-"


def test_a_central_estimate_off_by_more_than_30_percent_is_explained():
    for row in ROWS:
        if abs(row.off) > OFF_BY:
            # The report disagrees with others on the same card: the data says so in words.
            assert "half what" in row.what_it_says or "older build" in row.what_it_says, row.id
    # And most reports are within 30% of the central estimate.
    assert sum(abs(r.off) <= OFF_BY for r in ROWS) >= len(ROWS) - 1


def test_every_report_names_its_source_and_a_real_stand_in():
    for m in measurements():
        assert m["source"] and m["what_it_says"]
        assert m["generation_tokens_per_s"][0] <= m["generation_tokens_per_s"][1]


def test_the_docs_table_is_what_the_model_prints_now():
    doc = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    for line in markdown_table(ROWS):
        assert line in doc, f"docs/performance.md is stale; `python scripts/speed_table.py` prints:\n{line}"


def test_fit_json_carries_the_range_of_each_estimate():
    out = subprocess.run([sys.executable, "-m", "localcascade", "fit", "Q4_K_M", "--gpu", "rtx-4090", "--json"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    row = data["variants"][0]["rows"][0]
    low, high = row["tokens_per_s_range"]
    assert low < row["tokens_per_s"] < high and not row["speed_measured"]
    rec = data["recommended"]
    low, high = rec["tokens_per_s_range"]
    assert low < rec["tokens_per_s"] < high
    assert any(f"tokens/s generating (estimated, {low:.0f}-{high:.0f})" in r for r in rec["reasons"])
