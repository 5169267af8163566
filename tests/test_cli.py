"""The command line: help everywhere, clear errors with exit status 2, the demo."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from qsmiron.cli import build_parser, main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: qsmiron " + command in capsys.readouterr().out


def test_table_only_cohort(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path), "--subjects", "95", "--seed", "1",
                 "--table-only"]) == 0
    df = pd.read_csv(tmp_path / "cohort.tsv", sep="\t")
    assert len(df) == 95
    assert {"age", "sex", "rel_chi_ppb", "t2_lesion_volume_ml"} <= set(df.columns)


def test_effects_file(tmp_path, capsys):
    good = tmp_path / "effects.toml"
    good.write_text("[effects]\nchi_enhancing_ppb = 20.0\np_enhancing = 0.5\n")
    assert main(["simulate", "--out", str(tmp_path / "a"), "--subjects", "400", "--table-only",
                 "--effects", str(good)]) == 0
    df = pd.read_csv(tmp_path / "a" / "cohort.tsv", sep="\t")
    diff = (df.loc[df.enhancing_lesions == "yes", "rel_chi_ppb"].mean()
            - df.loc[df.enhancing_lesions == "no", "rel_chi_ppb"].mean())
    assert diff == pytest.approx(20.0, abs=4 * 11.7 * (2 / 200) ** 0.5)
    bad = tmp_path / "bad.toml"
    bad.write_text("[effects]\nchi_enhancement = 3\n")
    capsys.readouterr()
    assert main(["simulate", "--out", str(tmp_path / "b"), "--table-only",
                 "--effects", str(bad)]) == 2
    err = capsys.readouterr().err
    # one unwrapped line, whatever the console's width: the whole path can be copied
    assert str(bad) in err and "unknown effect" in err and err.strip().count("\n") == 0
    # an impossible acquisition: a clear error before any subject is simulated
    assert main(["simulate", "--out", str(tmp_path / "c"), "--subjects", "2",
                 "--snr", "-1"]) == 2
    err = capsys.readouterr().err
    assert "snr must be positive" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "bids").exists()


def test_inspect_real_gre(capsys):
    rc = main(["inspect", str(SHARED / "gre_small" / "Phase.nii"),
               "--magnitude", str(SHARED / "gre_small" / "Mag.nii"), "--te", "4", "8", "12"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "3 echoes" in err and "0.469" in err


def test_inspect_swapped_is_a_clear_error(capsys):
    rc = main(["inspect", str(SHARED / "gre_small" / "Mag.nii"),
               "--magnitude", str(SHARED / "gre_small" / "Phase.nii"), "--te", "4", "8", "12"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_demo_small(tmp_path, capsys):
    """The README's main command, one subject: simulate -> run -> stats -> report in a browser.

    One subject leaves every regression not estimable (the report says so); the default
    8-subject demo takes about 4 minutes on 2 cores (README).
    """
    from tests.report.chromium import check_page

    demo = tmp_path / "demo"
    assert main(["demo", "--out", str(demo), "--subjects", "1"]) == 0
    report = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == demo / "report" / "report.html"
    assert (demo / "bids" / "sub-001" / "anat" / "sub-001_T1w.nii.gz").exists()
    table = pd.read_csv(demo / "derivatives" / "qsmiron" / "measures.tsv", sep="\t")
    truth = pd.read_csv(demo / "truth" / "truth.tsv", sep="\t")
    assert table["status"].tolist() == ["ok"]
    assert abs(table["rel_chi_ppb"][0] - truth["rel_chi_ppb"][0]) <= 5.0
    page = check_page(report)
    assert page["loaded"] and page["broken_images"] == []
    assert {"table1", "table2"} <= set(page["table_ids"])
    subject = check_page(report.parent / "subjects" / "sub-001.html")
    # the anatomy QC panel and the lesion mosaic
    assert subject["n_images"] == 2 and subject["broken_images"] == []


@pytest.fixture(scope="module")
def sim2mm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim2mm")
    assert main(["simulate", "--out", str(out), "--subjects", "1", "--seed", "4"]) == 0
    return out


def test_recon_writes_bids_derivatives(sim2mm, tmp_path, capsys):
    import json

    import numpy as np

    from qsmiron.io.nifti import load_nifti

    deriv = tmp_path / "deriv"
    rc = main(["recon", str(sim2mm / "bids"), "--subject", "001", "--out", str(deriv),
               "--method", "tkd", "--bgremove", "vsharp"])
    assert rc == 0
    anat = deriv / "qsmiron" / "sub-001" / "anat"
    chi, aff, _ = load_nifti(anat / "sub-001_Chimap.nii.gz")
    _, aff_in, _ = load_nifti(sim2mm / "bids" / "sub-001" / "anat" / "sub-001_T1w.nii.gz")
    np.testing.assert_allclose(aff, aff_in)
    side = json.loads((anat / "sub-001_Chimap.json").read_text())
    assert side["Units"] == "ppm" and side["params"]["method"] == "tkd"
    assert side["GeneratedBy"][0]["Name"] == "qsmiron"
    for name in ("desc-brain_mask", "desc-qsm_mask", "desc-total_fieldmap",
                 "desc-local_fieldmap", "desc-noise_fieldmap", "R2starmap"):
        assert (anat / f"sub-001_{name}.nii.gz").exists(), name
    assert (deriv / "qsmiron" / "dataset_description.json").exists()


def test_invert_from_files(sim2mm, tmp_path, capsys):
    import numpy as np

    from qsmiron.io.nifti import load_nifti, save_nifti

    truth = sim2mm / "truth" / "sub-001"
    labels, aff, _ = load_nifti(truth / "sub-001_dseg.nii.gz")
    mask = tmp_path / "mask.nii.gz"
    save_nifti(mask, np.isin(labels, range(4, 37)), aff)
    field = truth / "sub-001_desc-local_fieldmap.nii.gz"
    out = tmp_path / "chi.nii.gz"
    assert main(["invert", "--field", str(field), "--mask", str(mask), "--out", str(out),
                 "--method", "tkd"]) == 0
    chi, _, _ = load_nifti(out)
    gp = np.isin(labels, [19, 20])
    assert chi[gp].mean() > chi[labels == 6].mean() + 0.05  # pallidum is paramagnetic
    # a field in Hz without --b0 is a clear error
    capsys.readouterr()
    assert main(["invert", "--field", str(field), "--mask", str(mask), "--out", str(out),
                 "--field-unit", "hz"]) == 2
    assert "--b0" in capsys.readouterr().err
