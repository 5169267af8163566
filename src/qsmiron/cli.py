"""The ``qsmiron`` command line: a thin layer that parses, calls the library, shows progress.

Errors qsmiron raises on purpose (:class:`~qsmiron.errors.QsmironError`) are printed as one
readable line and give exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

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
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError("effects file not found", p) from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML ({exc})", p) from None
    return Effects.from_mapping(data.get("effects", data), p)


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
            slab_rotation_deg=(args.slab_tilt, 0.0, 0.0),
            progress=lambda done, total, sub: prog.update(task, completed=done, current=sub),
        )
    dt = time.perf_counter() - t0
    console.print(
        f"simulated {args.subjects} subjects at {res_txt} mm in {dt:.0f} s\n"
        f"  BIDS dataset: {bids}\n  truth:        {out / 'truth'} (truth.tsv, label maps, "
        f"true susceptibility and field maps)"
    )
    print(bids)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from qsmiron.simulate.cohort import simulate_cohort

    out = Path(args.out)
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("demo: simulating cohort", total=args.subjects, current="")
        bids = simulate_cohort(
            out, args.subjects, seed=args.seed, voxel_size=2.0, overwrite=True,
            progress=lambda done, total, sub: prog.update(task, completed=done, current=sub),
        )
    dt = time.perf_counter() - t0
    console.print(
        f"[bold]qsmiron demo[/bold]: simulated {args.subjects} MS patients at 2 mm in {dt:.0f} s\n"
        f"  BIDS dataset (multi-echo GRE, T1w, FLAIR, post-Gd T1w): {bids}\n"
        f"  truth (labels, susceptibility, field, measures):     {out / 'truth'}\n"
        f"  cohort truth table:                                  {out / 'truth' / 'truth.tsv'}"
    )
    print(out)
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

    phase_scale: object = "auto"
    if args.phase_unit == "rad":
        phase_scale = "rad"
    if args.phase_range is not None:
        phase_scale = tuple(args.phase_range)
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
                       "phantom and say what was written.")
    p.add_argument("--out", default="qsmiron-demo", help="output folder (default: %(default)s)")
    p.add_argument("--subjects", type=int, default=10, help="cohort size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=2018, help="random seed (default: %(default)s)")
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
    p.set_defaults(func=_simulate)

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
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
