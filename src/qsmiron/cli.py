"""The ``qsmiron`` command line: a thin layer that parses, calls the library, shows progress.

Errors qsmiron raises on purpose (:class:`~qsmiron.errors.QsmironError`) are printed as one
readable line and give exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qsmiron import __version__
from qsmiron.errors import InputError, QsmironError

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[current]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _load_effects(path: str | None):
    from qsmiron.simulate.cohort import Effects

    if path is None:
        return Effects()
    from qsmiron.io.nifti import read_toml

    p = Path(path)
    data = read_toml(p, "effects file")
    return Effects.from_mapping(data.get("effects", data), p)


def _sim_workers(args: argparse.Namespace) -> int:
    """Subjects simulated at once: ``--workers``, or one per core (at most one per 4 GB)."""
    from qsmiron.cohort.runner import default_workers

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be at least 1, found {args.workers}")
    return args.workers or default_workers(max(1, args.subjects))


def _simulate(args: argparse.Namespace) -> int:
    from qsmiron.simulate.cohort import cohort_table, simulate_cohort
    from qsmiron.simulate.scan import Protocol

    effects = _load_effects(args.effects)
    out = Path(args.out)
    if args.table_only:
        from qsmiron.io.nifti import write_tsv

        df = cohort_table(args.subjects, args.seed, effects)
        path = write_tsv(out / "cohort.tsv", df)
        console.print(f"wrote a table-level cohort of {len(df)} subjects: {path}")
        print(path)
        return 0
    protocol = Protocol(snr=args.snr)
    if len(args.resolution) not in (1, 3):
        raise InputError(f"--resolution takes 1 or 3 values, found {len(args.resolution)}")
    res = args.resolution[0] if len(args.resolution) == 1 else tuple(args.resolution)
    res_txt = "x".join(f"{v:g}" for v in args.resolution)
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("simulating", total=args.subjects, current="")
        bids = simulate_cohort(
            out, args.subjects, seed=args.seed, voxel_size=res, effects=effects,
            protocol=protocol, overwrite=args.overwrite,
            slab_rotation_deg=(args.slab_tilt, 0.0, 0.0), workers=_sim_workers(args),
            progress=lambda done, total, sub: prog.update(task, completed=done, current=sub),
        )
    dt = time.perf_counter() - t0
    console.print(
        f"simulated {args.subjects} subject{'' if args.subjects == 1 else 's'} at {res_txt} mm "
        f"in {dt:.0f} s\n"
        f"  BIDS dataset: {bids}\n  truth:        {out / 'truth'} (truth.tsv, label maps, "
        f"true susceptibility and field maps)"
    )
    print(bids)
    return 0


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    import pandas as pd

    from qsmiron.cohort.runner import run_cohort
    from qsmiron.report.html import write_report
    from qsmiron.simulate.cohort import simulate_cohort
    from qsmiron.stats.spec import load_spec
    from qsmiron.stats.tables import read_measures, run_stats

    out = Path(args.out)
    if args.subjects < 1:
        raise InputError(f"--subjects must be at least 1, found {args.subjects}")
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("1/3 simulating the cohort", total=args.subjects, current="")
        bids = simulate_cohort(
            out, args.subjects, seed=args.seed, voxel_size=2.0, overwrite=True,
            workers=_sim_workers(args),
            progress=lambda done, total, sub: prog.update(task, completed=done, current=sub),
        )
        t_sim = time.perf_counter() - t0
        deriv = out / "derivatives"
        result = run_cohort(bids, deriv, workers=args.workers,
                            progress=_cohort_progress(prog, "2/3 recon, anatomy, measures"))
        t_run = time.perf_counter() - t0 - t_sim
        table = read_measures(result.table)
        # a demo cohort is smaller than the study's 10-row minimum: unadjusted models are
        # shown from 7 rows (5 residual degrees of freedom), adjusted ones from 11
        spec = load_spec(None)
        spec = dataclasses.replace(spec, min_rows=min(spec.min_rows, 7))
        task = prog.add_task("3/3 statistics and report", total=None, current="")
        report_dir = out / "report"
        run_stats(table, spec, report_dir, source=result.table, strict=False,
                  progress=lambda d, n, what: prog.update(task, completed=d, total=n,
                                                          current=what))
        report = write_report(report_dir, deriv_root=deriv / "qsmiron", measures=table)
    truth = pd.read_csv(out / "truth" / "truth.tsv", sep="\t").set_index("participant_id")
    ok = table[table["status"] == "ok"].set_index("participant_id")
    err = (ok["rel_chi_ppb"] - truth.loc[ok.index, "rel_chi_ppb"]).abs()
    dt = time.perf_counter() - t0
    console.print(
        f"[bold]qsmiron demo[/bold]: {args.subjects} simulated MS patients at 2 mm, "
        f"{len(ok)} measured, {result.n_failed} failed, in {dt:.0f} s "
        f"(simulation {t_sim:.0f} s, processing {t_run:.0f} s)\n"
        f"  relative thalamic susceptibility vs truth: mean |error| {err.mean():.1f} ppb, "
        f"largest {err.max():.1f} ppb\n"
        f"  BIDS dataset: {bids}\n  derivatives:  {deriv / 'qsmiron'}\n"
        f"  measures:     {result.table}\n  truth:        {out / 'truth' / 'truth.tsv'}\n"
        f"  report:       {report}\n"
        f"A cohort this small shows the chain, not the study's effects: "
        f"'qsmiron demo --subjects 95' reproduces them (about an hour on 2 cores).",
        highlight=False)
    print(report)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from qsmiron.io.dicom import dicom_to_bids

    with console.status(f"converting {args.dicom_dir} with dcm2niix"):
        written = dicom_to_bids(args.dicom_dir, args.bids_dir, args.subject, session=args.session)
    console.print(f"wrote {len(written)} files into {args.bids_dir}")
    for p in written:
        print(p)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from qsmiron.io.bids import read_megre_bids, read_megre_nifti

    phase_scale = _phase_scale(args)
    if args.subject is not None:
        gre = read_megre_bids(args.path, args.subject, session=args.session,
                              phase_scale=phase_scale)
    else:
        if args.magnitude is None or args.te is None:
            raise InputError(
                "give --subject for a BIDS dataset, or --magnitude, PATH as phase and --te "
                "for plain NIfTI"
            )
        gre = read_megre_nifti(args.magnitude, args.path, [t / 1000.0 for t in args.te],
                               b0=args.b0, phase_scale=phase_scale)
    vs = ", ".join(f"{v:.3g}" for v in gre.voxel_size)
    b0d = ", ".join(f"{v:+.3f}" for v in gre.b0_dir)
    console.print(
        f"multi-echo GRE: {gre.magnitude.shape[:3]} voxels of ({vs}) mm, {gre.n_echoes} echoes\n"
        f"  TE (ms): {', '.join(f'{t * 1000:.2f}' for t in gre.te)}\n"
        f"  B0: {gre.b0 if gre.b0 is not None else 'unknown'} T, direction in voxel frame ({b0d})\n"
        f"  phase scaling: {_describe_scaling(gre.metadata.get('PhaseScaling'))}"
    )
    return 0


def _phase_scale(args: argparse.Namespace) -> object:
    if args.phase_range is not None:
        return tuple(args.phase_range)
    return "rad" if args.phase_unit == "rad" else "auto"


def _recon(args: argparse.Namespace) -> int:
    from qsmiron.io.bids import read_megre_bids
    from qsmiron.recon.pipeline import ReconParams, reconstruct, write_recon_derivatives

    gre = read_megre_bids(args.bids_dir, args.subject, session=args.session,
                          phase_scale=_phase_scale(args))
    if args.b0 is not None:
        gre.b0 = float(args.b0)
    params = ReconParams(method=args.method, bgremove=args.bgremove, unwrap=args.unwrap,
                         mask_erode_mm=args.erode, zero_csf=not args.no_csf_reference)
    stages = ["mask", "fit", "unwrap", "background", "csf", "inversion"]
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task(f"recon sub-{args.subject.removeprefix('sub-')}",
                             total=len(stages), current="")

        def step(name: str) -> None:
            prog.update(task, completed=stages.index(name), current=name)

        result = reconstruct(gre, params, progress=step)
        prog.update(task, completed=len(stages), current="writing")
        paths = write_recon_derivatives(result, args.out, args.subject, gre.affine,
                                        session=args.session, sources=gre.sources)
    dt = time.perf_counter() - t0
    per_stage = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    console.print(f"reconstructed in {dt:.1f} s ({per_stage})\n  chi map: {paths['chi']}")
    print(paths["chi"])
    return 0


_ANATOMY_STAGES = ["T1w segmentation", "FLAIR registration", "lesions", "enhancing lesions",
                   "volumes", "QSM-space ROIs", "writing"]


def _anatomy(args: argparse.Namespace) -> int:
    import tempfile

    from qsmiron.anatomy.pipeline import (
        AnatomyParams,
        load_anatomy_inputs,
        run_anatomy,
        write_anatomy_derivatives,
    )

    inputs = load_anatomy_inputs(
        args.bids_dir, args.out, args.subject, args.session, freesurfer=args.freesurfer,
        synthseg=args.synthseg, thalamus_mask=args.thalamus_mask,
        csf_ref_mask=args.csf_ref_mask, lesion_mask=args.lesion_mask,
        vein_mask=args.vein_mask, lesion_seeds=args.lesion_seeds, gd_entity=args.gd_entity)
    params = AnatomyParams(csf_reference=args.csf_reference, csf_radius_mm=args.csf_radius,
                           vein_margin_mm=args.vein_margin)
    t0 = time.perf_counter()
    sub = args.subject.removeprefix("sub-")
    with _progress() as prog, tempfile.TemporaryDirectory(prefix="qsmiron-anat-") as work:
        task = prog.add_task(f"anatomy sub-{sub}", total=len(_ANATOMY_STAGES), current="")

        def step(name: str) -> None:
            prog.update(task, completed=_ANATOMY_STAGES.index(name), current=name)

        result = run_anatomy(inputs, work, params, progress=step)
        step("writing")
        paths = write_anatomy_derivatives(result, inputs, args.out, sub, args.session)
        prog.update(task, completed=len(_ANATOMY_STAGES), current="done")
    m = result.measures

    def num(key: str, spec: str) -> str:
        """A measure as text; "n/a" where it could not be made (see the QC flags)."""
        value = m.get(key)
        if not (isinstance(value, int | float) and math.isfinite(value)):
            return "n/a"
        return format(int(value) if spec == "d" else value, spec)

    lesions = (f"T2 lesions {num('t2_lesion_volume_ml', '.2f')} mL "
               f"({num('lesion_count', 'd')}"
               + ("" if not isinstance(m.get("lesion_count_periventricular"), int) else
                  f": {m['lesion_count_periventricular']} periventricular, "
                  f"{m['lesion_count_juxtacortical']} juxtacortical, "
                  f"{m['lesion_count_infratentorial']} infratentorial") + ")")
    console.print(
        f"anatomy of sub-{sub} in {time.perf_counter() - t0:.0f} s\n"
        f"  thalamus {num('thalamus_volume_ml', '.2f')} mL, chi relative to CSF "
        f"{num('rel_chi_ppb', '+.1f')} ppb (thalamus - CSF), veins excluded "
        f"{100 * m['vein_fraction_excluded']:.1f}%\n"
        f"  {lesions}, enhancing {num('enhancing_lesion_count', 'd')}, grey matter "
        f"{num('total_gm_volume_ml', '.0f')} mL\n"
        f"  QC flags: {', '.join(result.flags) or 'none'}\n"
        f"  QC picture: {paths['qc']}"
        + (f"\n  every lesion: {paths['lesion_qc']}" if "lesion_qc" in paths else ""),
        highlight=False)
    print(paths["measures"])
    return 0


def _cohort_progress(prog: Progress, title: str) -> Callable[[Any], None]:
    """A progress callback of :func:`qsmiron.cohort.runner.run_cohort` drawing on ``prog``."""
    task = prog.add_task(title, total=None, current="starting the Dask cluster")

    def show(p: Any) -> None:
        running = ", ".join(f"{k} ({v})" for k, v in sorted(p.running.items()))
        ok = p.done - p.failed - p.skipped
        prog.update(task, total=p.total, completed=p.done,
                    current=f"ok {ok} | failed {p.failed} | up to date {p.skipped} | "
                    f"running {len(p.running)}{': ' + running if running else ''}")
        if p.last is not None and p.last.get("status") != "ok":
            prog.console.print(f"[red]{p.last['participant_id']} failed[/red] in "
                               f"{p.last.get('stage')}: {p.last.get('error')}", highlight=False)
            p.last = None

    return show


def _run(args: argparse.Namespace) -> int:
    from qsmiron.cohort.runner import load_config, run_cohort

    params, run_cfg = load_config(args.config)
    # the command line wins over the file where given (a bad value, e.g. 0, is then refused)
    opts = {key: getattr(args, key) if getattr(args, key) is not None else run_cfg.get(key)
            for key in ("workers", "threads_per_worker", "memory_limit", "scheduler")}
    with _progress() as prog:
        result = run_cohort(args.bids_dir, args.out, args.participant_label, params,
                            progress=_cohort_progress(prog, "cohort"), **opts)
    console.print(
        f"cohort of {len(result.records)} in {result.seconds:.0f} s: {result.n_ok} done, "
        f"{result.n_skipped} already up to date, {result.n_failed} failed\n"
        f"  measures table: {result.table} (columns described in measures.json)\n"
        f"  logs:           {result.table.parent / 'logs'}", highlight=False)
    print(result.table)
    return min(result.n_failed, 100)

def _invert(args: argparse.Namespace) -> int:
    import numpy as np

    from qsmiron.io.nifti import b0_direction, load_nifti, save_nifti, voxel_size
    from qsmiron.recon.inversion import medi, tikhonov_l2, tkd
    from qsmiron.recon.multiecho import field_to_ppm

    field, affine, _ = load_nifti(args.field, ndim=(3,))
    mask_data, mask_aff, _ = load_nifti(args.mask, ndim=(3,))
    if mask_data.shape != field.shape or not np.allclose(mask_aff, affine, atol=1e-3):
        raise InputError(f"mask grid {mask_data.shape} does not match the field's "
                         f"{field.shape} (or their affines differ)", args.mask)
    mask = mask_data > 0.5
    if args.field_unit != "ppm":
        if args.b0 is None or (args.field_unit == "rad" and args.te is None):
            raise InputError(f"--field-unit {args.field_unit} needs --b0 (T)"
                             + (" and --te (ms)" if args.field_unit == "rad" else ""),
                             args.field)
        te = None if args.te is None else args.te / 1000.0
        field = field_to_ppm(field, args.b0, unit=args.field_unit, te=te)
    vs = voxel_size(affine)
    if args.b0_dir is not None:
        b0_dir = np.asarray(args.b0_dir, float)
    elif args.b0_from_affine:
        b0_dir = b0_direction(affine)
    else:
        b0_dir = np.array([0.0, 0.0, 1.0])
    magnitude = None
    if args.magnitude is not None:
        magnitude, _, _ = load_nifti(args.magnitude)
        if magnitude.ndim == 4:
            magnitude = np.sqrt((magnitude.astype(np.float32) ** 2).sum(-1))
        if magnitude.shape != field.shape:
            raise InputError(f"magnitude shape {magnitude.shape} does not match the field's "
                             f"{field.shape}", args.magnitude)
    with console.status(f"{args.method} inversion of {args.field}"):
        if args.method == "medi":
            if magnitude is None:
                console.print("[yellow]no --magnitude: MEDI's edge prior falls back to plain "
                              "total variation[/yellow]")
            res = medi(field, mask, vs, b0_dir, magnitude=magnitude)
            chi = res.chi
            info = {"iterations": res.iterations, "lambda": res.lam, "n_fft": res.n_fft,
                    "edge_prior": res.edge_prior}
        elif args.method == "tkd":
            chi, info = tkd(field, mask, vs, b0_dir), {}
        else:
            chi, info = tikhonov_l2(field, mask, vs, b0_dir), {}
    out = save_nifti(args.out, chi, affine, sidecar={
        "Units": "ppm", "Method": args.method, "Field": str(args.field),
        "Mask": str(args.mask), "B0Direction": [float(v) for v in b0_dir],
        "VoxelSize": [float(v) for v in vs], **info})
    console.print(f"wrote {out} ({args.method}, B0 direction "
                  f"{', '.join(f'{v:+.3f}' for v in b0_dir)})")
    print(out)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from rich.table import Table

    from qsmiron.stats.spec import load_spec
    from qsmiron.stats.tables import predictor_label, read_measures, run_stats

    spec = load_spec(args.spec)
    table = read_measures(args.measures)
    out = Path(args.out)
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("statistics", total=None, current="")

        def step(done: int, total: int, what: str) -> None:
            prog.update(task, completed=done, total=total, current=what)

        res = run_stats(table, spec, out, progress=step, source=args.measures,
                        strict=not args.keep_going)
    s = res.summary
    console.print(f"statistics of {s['n_ok']} of {s['n_rows']} subjects in "
                  f"{time.perf_counter() - t0:.1f} s ({spec.name})", highlight=False)
    for t in res.main_tables():
        grid = Table(title=f"{t.spec.id}: {t.spec.title}", title_justify="left",
                     show_lines=False, highlight=False)
        for col in ("outcome", "predictor", "n", "unadjusted", "adjusted"):
            grid.add_column(col, justify="right" if col == "n" else "left")
        for un, ad in zip(t.rows[0::2], t.rows[1::2], strict=True):
            grid.add_row(spec.label(un.outcome), predictor_label(ad, spec),
                         str(ad.n), un.text, ad.text)
        console.print(grid)
    lines = []
    pw = s["power"]
    if pw["power"] is not None:
        lines.append(f"  power for r = {pw['r']:g} at n = {pw['n']}: {100 * pw['power']:.1f}% "
                     f"(n = {pw['n_for_target']} for {100 * pw['target_power']:.0f}%)")
    lines.append(f"  tables:  {out / 'tables'} (CSV and Markdown, subgroups: "
                 f"{', '.join(g.label for g in spec.subgroups) or 'none'})")
    lines.append(f"  figures: {out / 'figures'}")
    lines.append(f"  summary: {res.json_path}")
    # the HTML report (qsmiron.report.html) reads stats.json and the files it names
    from qsmiron.report.html import write_report

    deriv = args.derivatives
    if deriv is None and (Path(args.measures).parent / "dataset_description.json").is_file():
        deriv = Path(args.measures).parent
    result_path = write_report(out, deriv_root=deriv, measures=table)
    lines.append(f"  report:  {result_path}")
    console.print("\n".join(lines), highlight=False)
    print(result_path)
    return 0


def _power(args: argparse.Namespace) -> int:
    from qsmiron.stats.power import n_for_power, power

    if args.n is not None:
        p = power(args.r, args.n, args.alpha)
        console.print(f"power {100 * p:.1f}% to detect r = {args.r:g} with n = {args.n} at "
                      f"two-sided alpha {args.alpha:g} (Fisher z)", highlight=False)
        print(f"{p:.4f}")
    else:
        target = 0.80 if args.power is None else args.power
        n = n_for_power(args.r, target, args.alpha)
        console.print(f"n = {n} for {100 * target:g}% power to detect r = {args.r:g} at "
                      f"two-sided alpha {args.alpha:g} (Fisher z; power at n = {n}: "
                      f"{100 * power(args.r, n, args.alpha):.1f}%)", highlight=False)
        print(n)
    return 0


def _describe_scaling(scaling: object) -> str:
    if isinstance(scaling, dict):
        return str(scaling.get("description", scaling))
    return "n/a" if scaling is None else str(scaling)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``qsmiron`` program."""
    parser = argparse.ArgumentParser(
        prog="qsmiron",
        description="Brain-iron studies in MS: multi-echo GRE -> QSM -> thalamus and CSF "
        "ROIs -> lesions and volumes -> cohort table -> statistics -> report.",
    )
    parser.add_argument("--version", action="version", version=f"qsmiron {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log library messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the main job on built-in (simulated) data",
                       description="Simulate a small 2 mm MS cohort from the built-in head "
                       "phantom, run it (recon, anatomy, measures on a local Dask cluster), "
                       "compute the study's statistics and write the HTML report.")
    p.add_argument("--out", default="qsmiron-demo", help="output folder (default: %(default)s)")
    p.add_argument("--subjects", type=int, default=8, help="cohort size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=2018, help="random seed (default: %(default)s)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="simulate an MS cohort as a BIDS dataset with truth",
                       description="Simulate multi-echo GRE, T1w, FLAIR and post-Gd T1w of a "
                       "synthetic MS cohort from the labelled head phantom, with known "
                       "susceptibility, anatomy, lesions and covariate effects.")
    p.add_argument("--out", required=True, help="output folder (bids/ and truth/ inside)")
    p.add_argument("--subjects", type=int, default=10, help="number of subjects")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    p.add_argument("--resolution", type=float, nargs="+", default=[2.0], metavar="MM",
                   help="voxel size in mm: one value (isotropic) or three, e.g. 0.5 0.5 2 as "
                   "in the reference study (default: 2)")
    p.add_argument("--slab-tilt", type=float, default=0.0, metavar="DEG",
                   help="oblique acquisition: tilt of the imaging slab about the left-right "
                   "axis, degrees (B0 is then not along a voxel axis)")
    p.add_argument("--snr", type=float, default=100.0,
                   help="first-echo GRE SNR in the brain (default: %(default)s)")
    p.add_argument("--effects", help="TOML file of effect sizes ([effects] table; names as in "
                   "qsmiron.simulate.cohort.Effects)")
    p.add_argument("--table-only", action="store_true",
                   help="write only the table-level cohort (covariates and true measures)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--workers", type=int,
                   help="subjects simulated at once, one process each (default: one per core)")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("recon", help="QSM from a BIDS multi-echo GRE (BIDS derivatives out)",
                       description="Reconstruct a susceptibility map: brain mask, nonlinear "
                       "multi-echo fit, unwrapping, background removal, dipole inversion. "
                       "Writes DERIV_DIR/qsmiron/sub-ID/anat/sub-ID_Chimap.nii.gz (ppm) with "
                       "masks, total/local/noise field (ppm), R2* and a provenance sidecar.")
    p.add_argument("bids_dir")
    p.add_argument("--subject", required=True)
    p.add_argument("--session")
    p.add_argument("--out", required=True, help="derivatives folder (DERIV_DIR)")
    p.add_argument("--method", choices=["medi", "tkd", "l2"], default="medi")
    p.add_argument("--bgremove", choices=["pdf", "lbv", "vsharp"], default="lbv")
    p.add_argument("--unwrap", choices=["romeo", "laplacian"], default="romeo")
    p.add_argument("--erode", type=float, default=0.0, metavar="MM",
                   help="extra brain-mask erosion, mm")
    p.add_argument("--no-csf-reference", action="store_true",
                   help="disable MEDI+0 (CSF uniformity and CSF zero reference)")
    p.add_argument("--b0", type=float, help="field strength, T (if the sidecars lack it)")
    p.add_argument("--phase-unit", choices=["auto", "rad"], default="auto")
    p.add_argument("--phase-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="raw phase values that map to -pi and +pi")
    p.set_defaults(func=_recon)

    p = sub.add_parser("anatomy", help="thalamus, CSF reference, veins, lesions and volumes",
                       description="Segment the T1w (template registration, CerebrA labels, "
                       "tissue classes), find T2 lesions on the FLAIR and enhancing lesions "
                       "on the post-gadolinium T1w, bring the labels into QSM space, exclude "
                       "veins from the thalamus, place the CSF reference in the atria and "
                       "measure. Needs 'qsmiron recon' outputs in DERIV_DIR. Writes BIDS "
                       "derivatives (dseg, masks, transforms, measures JSON, QC PNG).")
    p.add_argument("bids_dir")
    p.add_argument("--subject", required=True)
    p.add_argument("--session")
    p.add_argument("--out", required=True, help="derivatives folder (DERIV_DIR)")
    p.add_argument("--freesurfer", metavar="DIR",
                   help="FreeSurfer/FastSurfer subject folder: its aseg, aseg.stats and "
                   "aparc stats replace the built-in segmentation")
    p.add_argument("--synthseg", metavar="SEG", help="SynthSeg label map (with its "
                   "_volumes.csv beside it, if any) instead of the built-in segmentation")
    p.add_argument("--thalamus-mask", metavar="NII",
                   help="thalamus labels 10/49 (or a mask) in QSM world space")
    p.add_argument("--csf-ref-mask", metavar="NII", help="CSF reference mask (QSM space)")
    p.add_argument("--lesion-mask", metavar="NII", help="T2 lesion mask (FLAIR space)")
    p.add_argument("--vein-mask", metavar="NII", help="vein mask (QSM space)")
    p.add_argument("--lesion-seeds", metavar="TSV",
                   help="semi-automatic lesions as in the study: a TSV/CSV with columns x y z "
                   "(scanner RAS mm), one seed per lesion, each grown on the FLAIR")
    p.add_argument("--csf-reference", choices=["atrium", "ventricles"], default="atrium",
                   help="small ROI in each atrium (study) or whole lateral ventricles")
    p.add_argument("--csf-radius", type=float, default=4.0, metavar="MM",
                   help="radius of the atrium ROI (default: %(default)s mm)")
    p.add_argument("--vein-margin", type=float, default=0.0, metavar="MM",
                   help="further margin removed around veins, beyond their one-voxel "
                   "partial-volume rim (default: %(default)s mm)")
    p.add_argument("--gd-entity", default="gadolinium",
                   help="ce- label of the post-contrast T1w (default: %(default)s)")
    p.set_defaults(func=_anatomy)

    p = sub.add_parser("run", help="a whole BIDS dataset: recon -> anatomy -> measures table",
                       description="Run every subject (and session) of a BIDS dataset through "
                       "reconstruction, anatomy and measurement in parallel on Dask, resumably, "
                       "and write DERIV_DIR/qsmiron/measures.tsv. The exit status is the number "
                       "of failed subjects (at most 100); 2 for a usage error.")
    p.add_argument("bids_dir")
    p.add_argument("--out", required=True, help="derivatives folder (qsmiron/ inside)")
    p.add_argument("--participant-label", nargs="+", metavar="ID",
                   help="subjects to run (default: all)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per "
                   "core, at most one per 4 GB of memory)")
    p.add_argument("--memory-limit", help="memory limit per local worker, e.g. 4GB "
                   "(default: memory shared evenly)")
    p.add_argument("--threads-per-worker", type=int, metavar="N",
                   help="threads of each local worker (default: the cores shared evenly)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler "
                   "(e.g. tcp://host:8786, dask-jobqueue on SLURM/PBS) instead of a local one")
    p.add_argument("--config", metavar="TOML", help="study file: [recon], [anatomy], [run]")
    p.set_defaults(func=_run)

    p = sub.add_parser("invert", help="dipole inversion of a local field map",
                       description="Invert a local field (ppm by default) inside a mask. B0 is "
                       "along the third voxel axis unless --b0-dir or --b0-from-affine; voxel "
                       "size from the header.")
    p.add_argument("--field", required=True, help="local field NIfTI")
    p.add_argument("--mask", required=True, help="mask NIfTI (same grid)")
    p.add_argument("--out", required=True, help="output chi NIfTI (ppm)")
    p.add_argument("--magnitude", help="magnitude NIfTI for MEDI's edge prior (3D or 4D)")
    p.add_argument("--method", choices=["medi", "tkd", "l2"], default="medi")
    p.add_argument("--field-unit", choices=["ppm", "rad", "hz"], default="ppm")
    p.add_argument("--te", type=float, help="echo time in ms (for --field-unit rad)")
    p.add_argument("--b0", type=float, help="field strength, T (for rad or hz)")
    p.add_argument("--b0-dir", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="B0 direction in the voxel frame")
    p.add_argument("--b0-from-affine", action="store_true",
                   help="derive the B0 direction from the header (scanner z axis)")
    p.set_defaults(func=_invert)

    p = sub.add_parser("stats", help="the study's tables, ladder of powers, power and figures",
                       description="Regenerate the study's regression tables from a cohort "
                       "table (measures.tsv): Table 1 and Table 2 of the reference study, "
                       "unadjusted and adjusted (statsmodels OLS), in each subgroup, with "
                       "Tukey's ladder of powers and quantile-normal plots, scatter plots with "
                       "fits, the power statement, stats.json and report.html. Rows whose status "
                       "is not 'ok' are left out.")
    p.add_argument("measures", metavar="MEASURES_TSV",
                   help="per-subject table (TSV with n/a for missing values, or .csv)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR",
                   help="output folder (tables/, figures/, stats.json, report.html)")
    p.add_argument("--spec", metavar="TOML", help="study spec (default: the reference study; "
                   "see docs/study.toml and docs/stats.md)")
    p.add_argument("--derivatives", metavar="DIR",
                   help="qsmiron derivatives folder of the cohort run, for the per-subject QC "
                   "pages (default: the folder of MEASURES_TSV when it is a BIDS derivatives "
                   "folder)")
    p.add_argument("--keep-going", action="store_true",
                   help="report models that cannot be fitted (too few rows, constant or "
                   "collinear columns, values outside a transform's domain) as not estimable "
                   "instead of stopping")
    p.set_defaults(func=_stats)

    p = sub.add_parser("power", help="power of a correlation study, or the n it needs",
                       description="Power of the two-sided test of a correlation by Fisher's "
                       "z, for a given n (--n), or the smallest n reaching a power (--power, "
                       "default 0.8).")
    p.add_argument("--r", type=float, required=True, help="smallest correlation of interest")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="two-sided significance level (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--n", type=int, help="number of subjects: print the power")
    g.add_argument("--power", type=float, help="target power: print the n needed (default 0.8)")
    p.set_defaults(func=_power)

    p = sub.add_parser("convert", help="convert a DICOM folder to BIDS (dcm2niix)",
                       description="Convert a DICOM folder through dcm2niix into the BIDS "
                       "layout qsmiron reads (MEGRE echoes, T1w, FLAIR).")
    p.add_argument("dicom_dir")
    p.add_argument("bids_dir")
    p.add_argument("--subject", required=True)
    p.add_argument("--session")
    p.set_defaults(func=_convert)

    p = sub.add_parser("inspect", help="read a multi-echo GRE and report what was found",
                       description="Read a multi-echo GRE from a BIDS dataset (PATH with "
                       "--subject) or plain NIfTI (PATH = phase, --magnitude, --te) and print "
                       "echo times, voxel size, B0 direction and phase scaling.")
    p.add_argument("path", help="BIDS dataset folder, or the 4D phase NIfTI")
    p.add_argument("--subject")
    p.add_argument("--session")
    p.add_argument("--magnitude", help="4D magnitude NIfTI (plain NIfTI input)")
    p.add_argument("--te", type=float, nargs="+", help="echo times in ms (plain NIfTI input)")
    p.add_argument("--b0", type=float, help="field strength, T (plain NIfTI input)")
    p.add_argument("--phase-unit", choices=["auto", "rad"], default="auto")
    p.add_argument("--phase-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="raw phase values that map to -pi and +pi")
    p.set_defaults(func=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qsmiron`` program; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except QsmironError as exc:
        # not wrapped at the console's width: a file name split over two lines cannot be
        # copied, and the message is grepped in logs
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
