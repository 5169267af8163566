"""The HTML report, opened in a real (headless Chromium) browser.

A real chain makes the input: one simulated subject (cohort seed 7, 2 mm) through
``qsmiron recon`` and ``qsmiron anatomy`` gives the subject's derivatives and QC picture; the
statistics of a table-level cohort of 95 (``cohort_table(95, seed=1)``, the reference study's
size) give ``stats.json``, its tables and figures. A second subject that failed in recon (no
derivatives, an error message full of HTML) checks the failure path and the escaping.

Chromium must be installed (Debian: ``apt-get install chromium``); a missing browser fails
the test with that message.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from qsmiron.errors import InputError
from qsmiron.report.html import subject_key, write_report, write_subject_pages
from qsmiron.simulate.cohort import cohort_table
from qsmiron.stats.tables import run_stats

from .chromium import check_page, local_links, screenshot

SUB = "001"
EVIL = '<script>alert("x")</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def report(seed7_subject, tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("report")
    bids, deriv = seed7_subject["bids"], seed7_subject["deriv"]
    root = deriv / "qsmiron"
    anat = json.loads((root / f"sub-{SUB}" / "anat" / f"sub-{SUB}_desc-anatomy_measures.json")
                      .read_text())
    participants = pd.read_csv(bids / "participants.tsv", sep="\t").iloc[0].to_dict()
    ok = {**participants, **{k: v for k, v in anat.items() if not isinstance(v, (dict, list))},
          "status": "ok", "qc_flags": "vein_fraction_high"}
    failed = {"participant_id": "sub-002", "status": "failed", "stage": "recon",
              "error": EVIL}
    measures = pd.DataFrame([ok, failed])
    report_dir = out / "report"
    stats = run_stats(cohort_table(95, seed=1), None, report_dir)
    html = write_report(report_dir, deriv_root=root, measures=measures)
    return {"dir": report_dir, "html": html, "root": root, "anat": anat,
            "stats": stats.summary, "measures": measures}


def _texts(html: str) -> str:
    """The page's visible text (tags dropped, entities decoded), whitespace collapsed."""

    class P(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    p = P()
    p.feed(html)
    return re.sub(r"\s+", " ", " ".join(p.parts))


def test_report_in_chromium(report, tmp_path) -> None:
    """The page loads from disk, shows every table and every image (none broken)."""
    stats = report["stats"]
    res = check_page(report["html"])
    assert res["loaded"] and res["title"].startswith("qsmiron report")
    assert res["n_scripts"] == 0
    assert res["broken_images"] == [], res["broken_images"]
    n_fig = len(stats["ladder"]) + len(stats["scatter"])
    assert res["n_images"] == n_fig >= 9  # 5 ladder grids + 9 scatter/group plots
    assert all(w > 100 and h > 100 for _, w, h in res["image_sizes"])
    # Tables 1 and 2 and their subgroup versions, rows as in stats.json (one per pair)
    ids = [t["key"] for t in stats["tables"]]
    assert ids == ["table1", "table2", "table1_age-le-50", "table2_age-le-50"]
    rows = dict(zip(res["table_ids"], res["table_rows"], strict=True))
    for t in stats["tables"]:
        assert rows[t["key"]] == len(t["rows"]) // 2 > 0
    assert "Subjects and QC" in res["headings"] and "Provenance" in res["headings"]

    # subject pages: the QC picture and the lesion mosaic decode; the failed subject has no
    # image at all
    page = check_page(report["dir"] / "subjects" / f"sub-{SUB}.html")
    assert page["broken_images"] == [] and page["n_images"] == 2
    assert page["image_sizes"][0][1:] == [1920, 1080]  # anatomy_qc_panel: 16 x 9 in, 120 dpi
    failed = check_page(report["dir"] / "subjects" / "sub-002.html")
    assert failed["loaded"] and failed["n_images"] == 0 and failed["broken_images"] == []
    assert "No QC picture" in failed["dom"]
    assert "<script>alert" not in failed["dom"] and "&lt;script&gt;alert" in failed["dom"]

    shot = screenshot(report["html"], tmp_path / "report.png", height=3000)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


def test_report_content_and_self_contained(report) -> None:
    """What the page says (numbers from stats.json), links inside the folder, text escaped."""
    rdir: Path = report["dir"]
    html = report["html"].read_text(encoding="utf-8")
    text = _texts(html)
    stats = report["stats"]
    # power of the cohort's own n for r = 0.28: Fisher z gives 78.8% at n = 95, n = 98 for 80%
    assert "With n = 95, the power to detect a correlation of r = 0.28" in text
    assert "is 78.8% (Fisher z). 80% power needs n = 98." in text
    assert stats["cohort_paragraph"].split(":")[0] in text  # "Ninety-five patients ..."
    assert "minus mean susceptibility of the CSF reference" in text
    # every Table 2 cell as the statistics formatted it (coefficient (95% CI), P)
    for row in stats["tables"][1]["rows"]:
        coef, p = row["text"].rsplit(", P = ", 1) if ", P = " in row["text"] else \
            row["text"].rsplit(", P ", 1)
        assert coef in text and p.lstrip("<> ") in text
    assert "Enhancing lesions (yes vs no)" in text and "log T2 lesion volume" in text
    assert "D'Agostino-Pearson" in text  # the normality test is named
    # per-subject table: link to the page, measures, flag; the failure with stage and error
    assert f'href="subjects/sub-{SUB}.html"' in html and 'href="subjects/sub-002.html"' in html
    assert f"{report['anat']['rel_chi_ppb']:.1f}".replace("-", "\u2212") in text
    assert "vein_fraction_high" in text and "stage recon" in text
    assert EVIL in text and "<script>alert" not in html  # shown as text, never as markup

    # self-contained: every link and image is a file inside the report folder
    pages = [report["html"], *sorted((rdir / "subjects").glob("*.html"))]
    assert len(pages) == 3
    for page in pages:
        for link in local_links(page):
            assert not re.match(r"^[a-z]+:", link), f"{page.name}: external link {link}"
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.is_file(), f"{page.name}: {link} missing"
            assert target.is_relative_to(rdir.resolve()), f"{page.name}: {link} outside"
    # the QC pictures are copies of the anatomy stage's figures
    for kind in ("anatomy", "lesions"):
        fig = report["root"] / f"sub-{SUB}" / "figures" / f"sub-{SUB}_desc-{kind}_qc.png"
        assert (rdir / "subjects" / fig.name).read_bytes() == fig.read_bytes(), kind
    sub_html = (rdir / "subjects" / f"sub-{SUB}.html").read_text(encoding="utf-8")
    sub_text = _texts(sub_html)
    assert 'href="../report.html"' in sub_html
    assert "thalamus_volume_ml" in sub_text and f"{report['anat']['thalamus_volume_ml']:.2f}" \
        in sub_text
    assert "more than 20% of the thalamus removed as veins" in sub_text
    assert "dipole inversion medi" in sub_text  # recon provenance from Chimap.json


def test_subject_pages_keys_sessions_and_errors(tmp_path) -> None:
    """Keys with sessions, pages without derivatives, and the errors a user can act on."""
    measures = pd.DataFrame([
        {"participant_id": "sub-01", "session_id": "ses-A", "status": "ok", "rel_chi_ppb": -20.0},
        {"participant_id": "02", "session_id": "n/a", "status": "failed", "stage": "anatomy",
         "error": "no T1w"},
    ])
    pages = write_subject_pages(tmp_path / "deriv", tmp_path / "rep", measures)
    assert pages == {"sub-01_ses-A": "subjects/sub-01_ses-A.html",
                     "sub-02": "subjects/sub-02.html"}
    page = (tmp_path / "rep" / pages["sub-01_ses-A"]).read_text()
    assert "<img" not in page and "sub-01/ses-A/figures/sub-01_ses-A_desc-anatomy_qc.png" in page
    assert "failed in stage anatomy" in (tmp_path / "rep" / pages["sub-02"]).read_text()
    assert subject_key("sub-7", None) == "sub-7"
    with pytest.raises(InputError, match="participant_id"):
        subject_key("../etc", None)
    with pytest.raises(InputError, match="more than once"):
        write_subject_pages(tmp_path, tmp_path / "rep", pd.concat([measures, measures]))
    with pytest.raises(InputError, match="stats.json"):
        write_report(tmp_path / "empty")
