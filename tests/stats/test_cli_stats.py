"""The stats and power commands: thin layers over qsmiron.stats, errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from qsmiron.cli import main
from qsmiron.io.nifti import write_tsv
from qsmiron.simulate.cohort import cohort_table


def test_power_command(capsys):
    assert main(["power", "--r", "0.28", "--alpha", "0.05", "--n", "95"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "0.7880" and "78.8%" in out.err
    assert main(["power", "--r", "0.28", "--alpha", "0.05", "--power", "0.8"]) == 0
    assert capsys.readouterr().out.strip() == "98"
    assert main(["power", "--r", "0.28"]) == 0  # default: n for 80% power
    assert capsys.readouterr().out.strip() == "98"
    assert main(["power", "--r", "1.5", "--n", "95"]) == 2
    assert "correlation r must be in" in capsys.readouterr().err


@pytest.fixture
def fake_report(monkeypatch):
    """Stands in for qsmiron.report.html.write_report (tested with the report)."""
    calls = []

    def write_report(report_dir, deriv_root=None, measures=None):
        calls.append((report_dir, deriv_root, measures))
        return report_dir / "report.html"

    monkeypatch.setattr("qsmiron.report.html.write_report", write_report)
    return calls


def test_stats_command(tmp_path, capsys, fake_report):
    tsv = write_tsv(tmp_path / "measures.tsv", cohort_table(95, seed=1))
    out = tmp_path / "report"
    assert main(["stats", str(tsv), "--out", str(out)]) == 0
    std = capsys.readouterr()
    assert std.out.strip() == str(out / "report.html")
    assert "table1" in std.err and "power for r = 0.28 at n = 95: 78.8%" in std.err
    s = json.loads((out / "stats.json").read_text())
    assert s["n_ok"] == 95 and s["source"] == str(tsv)
    assert len(fake_report) == 1 and len(fake_report[0][2]) == 95


def test_stats_command_errors(tmp_path, capsys, fake_report):
    tsv = write_tsv(tmp_path / "measures.tsv", cohort_table(12, seed=1))
    bad = tmp_path / "bad.toml"
    bad.write_text("covariates = ['age', 'gender']\n")
    assert main(["stats", str(tsv), "--out", str(tmp_path / "r"), "--spec", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "gender" in err
    assert main(["stats", str(tsv), "--out", str(tmp_path / "r")]) == 2
    assert "rows" in capsys.readouterr().err
    assert main(["stats", str(tsv), "--out", str(tmp_path / "r"), "--keep-going"]) == 0
    assert main(["stats", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "r")]) == 2
    assert "measures table not found" in capsys.readouterr().err
