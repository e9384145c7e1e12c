"""Every table the CLI prints has a one-line legend that names each of its columns, and the HTML
report and README carry the same words."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from unlock_lens.cli import RUN_COLUMNS, SUMMARY_COLUMNS
from unlock_lens.legends import TABLE_LEGENDS
from unlock_lens.plots import write_report

README = Path(__file__).resolve().parents[1] / "README.md"
DEMO_COLUMNS = ["condition", "model", "n", "accuracy", "ci_lo", "ci_hi", "step_rate", "cos_native",
                "rank_among_nulls", "p_direction", "min_seed_accuracy", "median_seed_accuracy",
                "max_seed_accuracy"]


def test_each_legend_is_one_line_and_names_every_column_of_its_table():
    for table, columns in {"eval": SUMMARY_COLUMNS, "run": RUN_COLUMNS, "demo": DEMO_COLUMNS}.items():
        legend = TABLE_LEGENDS[table]
        assert "\n" not in legend and "NaN" in legend
        unnamed = [c for c in columns if c not in ("condition", "alpha", "seed", "n", "model")
                   and c not in legend]
        assert not unnamed, (table, unnamed)
    assert "random-mapped =" in TABLE_LEGENDS["run"] and "random =" in TABLE_LEGENDS["eval"]


def test_readme_quotes_every_legend_word_for_word():
    text = " ".join(README.read_text().split())
    for table, legend in TABLE_LEGENDS.items():
        assert f"`unlock-lens {table}`: {legend}" in text, table


def test_the_html_report_ends_its_table_with_the_legend(tmp_path):
    frame = pd.DataFrame({"condition": ["direct"], "accuracy": [0.5]})
    path = write_report(tmp_path / "r.html", "t", [], frame, legend=TABLE_LEGENDS["demo"])
    html = path.read_text()
    assert html.index("</table>") < html.index("cos_native = mean per-layer cosine")
