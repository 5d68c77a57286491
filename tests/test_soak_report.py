"""The soak's report (benchmarks/soak_parts/report.py): grouping and totals."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))

from soak_parts import common  # noqa: E402  pylint: disable=wrong-import-position
from soak_parts import report  # noqa: E402  pylint: disable=wrong-import-position


def _results():
    kills = common.part("kills", [common.row("SIGKILL of bin/train", 3, 3, 0)],
                        figures={"restarts": 3})
    more_kills = common.part(
        "kills", [common.row("SIGTERM of bin/extract_features", 2, 2, 0)])
    serving = common.part("serving", [common.row("NaN waveform", 4, 3, 1,
                                                 "one | crash")],
                          notes=["TFLite not checked"])
    # Out of section order on purpose: the report puts kills first.
    return [("serving", [serving], 1.5), ("train_kills", [kills], 10.0),
            ("extract_kills", [more_kills], 5.0)]


def test_rows_are_grouped_by_section_in_order_with_totals():
    summary = report.report(_results(), seed=7, quick=True, seconds=16.5)
    assert list(summary["sections"]) == ["kills", "serving"]
    kills = summary["sections"]["kills"]
    assert [r["part"] for r in kills["rows"]] == ["train_kills",
                                                 "extract_kills"]
    assert kills["figures"] == {"train_kills.restarts": 3}
    assert kills["parts"] == {"train_kills": 10.0, "extract_kills": 5.0}
    assert summary["totals"] == {"faults_injected": 9, "survived": 8,
                                 "lost": 1, "rows_not_ok": 1}
    assert summary["ok"] is False


def test_all_rows_ok_makes_the_soak_ok():
    results = [r for r in _results() if r[0] != "serving"]
    assert report.report(results, 0, False, 1.0)["ok"] is True


def test_markdown_table_marks_the_failed_row_and_keeps_one_line_per_row():
    table = report.markdown(report.report(_results(), 7, True, 16.5))
    lines = table.splitlines()
    failed = [l for l in lines if "NaN waveform" in l]
    assert len(failed) == 1 and "**NO**" in failed[0]
    # A '|' inside a detail would split the cell.
    assert failed[0].count("|") == 8
    assert "- serving: TFLite not checked" in table
    assert "Faults injected: 9; survived: 8; lost: 1" in table


def test_rows_and_parts_are_checked():
    assert common.row("x", 2, 2, 0)["ok"]
    assert not common.row("x", 2, 1, 0)["ok"]
    assert not common.row("x", 2, 2, 1)["ok"]
    with pytest.raises(ValueError, match="unknown section"):
        common.part("disks", [])
