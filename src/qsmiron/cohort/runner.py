"""Cohort runs on Dask: every subject recon -> anatomy -> measure, resumable, one table out.

Each subject (or subject/session: a *unit*) is one Dask task running
:func:`qsmiron.measure.subject.measure_subject` on a worker. The client only decides, waits,
reports progress and writes the table, so the same run goes from a laptop (a
:class:`distributed.LocalCluster`, one single-threaded worker process per core pair) to a
SLURM/PBS cluster (``--scheduler ADDRESS`` of a scheduler whose workers dask-jobqueue started).

Safety rules
------------
* A unit's outputs are written into ``DERIV/qsmiron/.staging/<unit>/`` and moved into place by
  one directory rename after its record (``sub-X[_ses-Y]_measures.json``) is written last.
  A unit folder is therefore either complete or absent: a run killed mid-subject leaves only
  a staging folder, which the next run deletes and redoes.
* A unit is skipped when its record says ``ok`` and its resume key
  (:func:`qsmiron.cohort.provenance.input_key`: input file contents, parameters, qsmiron
  version) is unchanged; a changed key redoes it (stale); failed units are retried.
* An exception in one subject becomes a ``failed`` record (stage and message) and never stops
  the others; a worker that dies (out of memory, killed) is recorded the same way.
* Every unit logs to ``DERIV/qsmiron/logs/<unit>.log``.

References
----------
.. [1] Dask Development Team, "Dask: Library for dynamic task scheduling", 2016,
   https://dask.org; distributed scheduler https://distributed.dask.org.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from qsmiron import __version__
from qsmiron.cohort.provenance import input_key, subject_inputs
from qsmiron.errors import InputError, QsmironError
from qsmiron.io.bids import list_subjects, write_dataset_description
from qsmiron.io.nifti import atomic_write_bytes, read_json, read_toml, write_json, write_tsv
from qsmiron.measure.subject import MEASURES, SubjectParams, measure_subject
from qsmiron.recon.fft import limit_threads

__all__ = ["CohortResult", "Progress", "Unit", "build_table", "load_config", "process_unit",
           "run_cohort", "select_units", "write_table"]

log = logging.getLogger(__name__)

_STAGING = ".staging"
_TRASH = ".trash"
_LOGS = "logs"
_STAGE_FILE = "stage"


@dataclass(frozen=True)
class Unit:
    """One subject, or one session of a subject: the unit of work, resume and failure."""

    subject: str
    session: str | None = None

    @property
    def label(self) -> str:
        """``sub-X`` or ``sub-X_ses-Y`` (file-name prefix, log name, staging name)."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def folder(self, root: Path) -> Path:
        """The unit's folder under the derivatives root ``DERIV/qsmiron``."""
        f = root / f"sub-{self.subject}"
        return f / f"ses-{self.session}" if self.session else f

    def record(self, root: Path) -> Path:
        """Path of the unit's record of measures, QC flags and status."""
        return self.folder(root) / f"{self.label}_measures.json"


@dataclass
class Progress:
    """What the client knows during a run (given to the ``progress`` callback).

    Attributes
    ----------
    total, done, failed, skipped : int
        Units in the run; finished (ok, failed or skipped); failed; skipped as up to date.
    running : dict
        Unit label -> current stage of units now on a worker.
    last : dict or None
        The record of the unit that just finished.
    """

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    running: dict[str, str] = field(default_factory=dict)
    last: dict[str, Any] | None = None


@dataclass
class CohortResult:
    """Outcome of :func:`run_cohort`.

    Attributes
    ----------
    table : Path
        ``DERIV/qsmiron/measures.tsv`` (with ``measures.json`` beside it).
    records : list of dict
        The run's units' records, in unit order.
    n_ok, n_failed, n_skipped : int
        Units that finished in this run, failed, or were up to date.
    seconds : float
        Wall time.
    """

    table: Path
    records: list[dict[str, Any]]
    n_ok: int
    n_failed: int
    n_skipped: int
    seconds: float


# --------------------------------------------------------------------------------------------
# selection


def select_units(bids_dir: str | Path, participant_labels: Sequence[str] | None = None
                 ) -> list[Unit]:
    """The units of a BIDS dataset, optionally restricted to some participants.

    Parameters
    ----------
    bids_dir : str or Path
        Dataset root.
    participant_labels : sequence of str, optional
        Labels with or without ``sub-``.

    Returns
    -------
    list of Unit

    Raises
    ------
    InputError
        No subjects, or a label that is not in the dataset.
    """
    units = [Unit(s, t) for s, t in list_subjects(bids_dir)]
    if not units:
        raise InputError("no sub-* folders: not a BIDS dataset with subjects", bids_dir)
    if participant_labels:
        wanted = [str(p).removeprefix("sub-") for p in participant_labels]
        have = {u.subject for u in units}
        missing = [w for w in wanted if w not in have]
        if missing:
            raise InputError(
                f"participant(s) {', '.join('sub-' + m for m in missing)} not in the dataset; "
                f"found {', '.join(sorted('sub-' + h for h in have)[:20])}", bids_dir)
        units = [u for u in units if u.subject in set(wanted)]
    return units


# --------------------------------------------------------------------------------------------
# the task (runs on a Dask worker)


class _UnitLog(logging.Handler):
    """A file handler that only takes records of the thread running the unit."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.INFO)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = logging.FileHandler(path, mode="w", encoding="utf-8")
        self._fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                "%(message)s"))
        self._thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread:
            self._fh.emit(record)

    def close(self) -> None:
        self._fh.close()
        super().close()


def _failed_record(unit: Unit, stage: str, message: str) -> dict[str, Any]:
    return {"participant_id": f"sub-{unit.subject}",
            "session_id": f"ses-{unit.session}" if unit.session else None,
            "status": "failed", "stage": stage, "error": message}


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, QsmironError):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (unexpected: please report it with the log)"


def _commit(root: Path, unit: Unit, staged_root: Path, record: dict[str, Any]) -> None:
    """Move a unit's staged outputs into place, record last, in one directory rename."""
    staged = unit.folder(staged_root)
    staged.mkdir(parents=True, exist_ok=True)
    write_json(unit.record(staged_root), record, add_version=True)
    final = unit.folder(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    trash = None
    if final.exists():
        trash = root / _TRASH / f"{unit.label}.{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        final.rename(trash)
    staged.rename(final)
    for gone in (trash, root / _STAGING / unit.label):
        if gone is not None:
            shutil.rmtree(gone, ignore_errors=True)


def read_record(root: Path, unit: Unit) -> dict[str, Any] | None:
    """A unit's record, or None if absent or unreadable (then the unit is redone)."""
    path = unit.record(root)
    if not path.exists():
        return None
    try:
        return read_json(path)
    except InputError:
        return None


def process_unit(
    bids_dir: str,
    deriv_dir: str,
    unit: Unit,
    params: SubjectParams,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run one unit if its results are missing or stale; never raises for a bad subject.

    This is the Dask task. It is safe to kill at any point (see the module's safety rules).

    Parameters
    ----------
    bids_dir, deriv_dir : str
        Dataset and derivatives folders (paths the worker can see).
    unit : Unit
        The subject (and session).
    params : SubjectParams
        Parameters.
    threads : int, optional
        Threads the unit may use (FFT workers, ITK, BLAS).

    Returns
    -------
    dict
        The unit's record; ``skipped`` True when it was already up to date.
    """
    limit_threads(threads)
    root = Path(deriv_dir) / "qsmiron"
    old = read_record(root, unit) or {}
    files = subject_inputs(bids_dir, unit.subject, unit.session)
    key, manifest = input_key(files, bids_dir, params.as_dict(), known=old.get("inputs"))
    if old.get("status") == "ok" and old.get("input_hash") == key:
        return {**old, "skipped": True}

    staging = root / _STAGING / unit.label
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run: never trusted
    staging.mkdir(parents=True)
    stage_file = staging / _STAGE_FILE
    stage = "read"

    def track(name: str) -> None:
        nonlocal stage
        stage = name.split(":")[0]
        atomic_write_bytes(stage_file, name.encode())

    handler = _UnitLog(root / _LOGS / f"{unit.label}.log")
    pkg_log = logging.getLogger("qsmiron")
    pkg_log.addHandler(handler)
    old_level = pkg_log.level
    if pkg_log.getEffectiveLevel() > logging.INFO:
        pkg_log.setLevel(logging.INFO)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    log.info("%s on %s (pid %d, %s threads), qsmiron %s, key %s", unit.label,
             socket.gethostname(), os.getpid(), threads or "all", __version__, key[:12])
    try:
        record = measure_subject(bids_dir, staging, unit.subject, unit.session, params,
                                 progress=track)
        log.info("%s finished: rel chi %s ppb", unit.label, record.get("rel_chi_ppb"))
    except Exception as exc:  # one bad subject never stops the others
        log.error("%s failed in stage %s: %s\n%s", unit.label, stage, exc,
                  traceback.format_exc())
        record = _failed_record(unit, stage, _error_text(exc))
    finally:
        pkg_log.removeHandler(handler)
        pkg_log.setLevel(old_level)
        handler.close()
    record.update({"input_hash": key, "inputs": manifest, "started": started,
                   "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                   "host": socket.gethostname(), "log": f"{_LOGS}/{unit.label}.log"})
    _commit(root, unit, staging / "qsmiron", record)
    return {**record, "skipped": False}


# --------------------------------------------------------------------------------------------
# the table


def _participants(bids_dir: Path) -> pd.DataFrame | None:
    path = bids_dir / "participants.tsv"
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read participants table ({exc})", path) from None
    if "participant_id" not in df.columns:
        raise InputError("participants.tsv has no participant_id column", path)
    for col in df.columns.drop("participant_id"):
        try:
            df[col] = pd.to_numeric(df[col])
        except (ValueError, TypeError):
            pass  # a text column (sex, therapy, ...)
    return df


def build_table(bids_dir: str | Path, deriv_dir: str | Path,
                units: Sequence[Unit] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The cohort table and its data dictionary from the units' records.

    Parameters
    ----------
    bids_dir, deriv_dir : str or Path
        Dataset and derivatives folders.
    units : sequence of Unit, optional
        Rows to include; default every unit of the dataset that has a record.

    Returns
    -------
    table : DataFrame
        One row per unit: ids, status, ``participants.tsv`` columns, measures, QC flags.
    dictionary : dict
        Column -> ``{"Description", "Units"/"Levels"}`` (``participants.json`` entries kept).
    """
    bids = Path(bids_dir)
    root = Path(deriv_dir) / "qsmiron"
    units = list(units) if units is not None else select_units(bids)
    rows = [r for u in units if (r := read_record(root, u)) is not None]
    measure_cols = [c for c in MEASURES if c not in ("input_hash", "seconds", "error", "stage",
                                                     "qc_flags")]
    tail = ["qc_flags", "error", "stage", "seconds", "input_hash"]
    table = pd.DataFrame(rows).reindex(columns=measure_cols + tail)
    dictionary: dict[str, Any] = {}
    part = _participants(bids)
    if part is not None:
        extra = [c for c in part.columns if c != "participant_id" and c not in table.columns]
        table = table.merge(part[["participant_id", *extra]], on="participant_id", how="left")
        head = ["participant_id", "session_id", "status"]
        table = table[head + extra + [c for c in table.columns if c not in head + extra]]
        pj = bids / "participants.json"
        if pj.exists():
            dictionary.update({k: v for k, v in read_json(pj).items() if k in extra})
        for c in extra:
            dictionary.setdefault(c, {"Description": f"{c} (from participants.tsv)"})
    for c in table.columns:
        if c in MEASURES:
            dictionary[c] = MEASURES[c]
    ordered = {c: dictionary[c] for c in table.columns if c in dictionary}
    return table.reset_index(drop=True), ordered


def write_table(bids_dir: str | Path, deriv_dir: str | Path,
                units: Sequence[Unit] | None = None) -> Path:
    """Write ``DERIV/qsmiron/measures.tsv`` and ``measures.json`` (atomically)."""
    table, dictionary = build_table(bids_dir, deriv_dir, units)
    root = Path(deriv_dir) / "qsmiron"
    write_json(root / "measures.json", dictionary)
    return write_tsv(root / "measures.tsv", table)


# --------------------------------------------------------------------------------------------
# configuration


def load_config(path: str | Path | None) -> tuple[SubjectParams, dict[str, Any]]:
    """Read a study TOML file's ``[recon]``, ``[anatomy]`` and ``[run]`` tables.

    Other tables (``[stats]``, ``[effects]``) belong to other commands and are left alone.

    Parameters
    ----------
    path : str or Path or None
        The file; None gives the defaults.

    Returns
    -------
    params : SubjectParams
        Recon and anatomy parameters (``[run] gd_entity`` included).
    run : dict
        ``workers``, ``threads_per_worker``, ``memory_limit``, ``scheduler`` when given.

    Raises
    ------
    InputError
        Unreadable TOML, an unknown key or a value of the wrong type, naming the file.
    """
    import dataclasses

    from qsmiron.anatomy.pipeline import AnatomyParams
    from qsmiron.recon.pipeline import ReconParams

    if path is None:
        return SubjectParams(), {}
    path = Path(path)
    data = read_toml(path, "config file")

    def section(name: str, cls: type) -> Any:
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise InputError(f"[{name}] must be a table", path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown key(s) {unknown} in [{name}]; known: {sorted(known)}",
                             path)
        try:
            obj = cls(**values)
        except TypeError as exc:
            raise InputError(f"bad [{name}] values ({exc})", path) from None
        defaults = cls()
        for f in dataclasses.fields(cls):
            default = getattr(defaults, f.name)
            got = getattr(obj, f.name)
            if default is not None and got is not None and not isinstance(
                    got, type(default)) and not (isinstance(default, float)
                                                 and isinstance(got, int)):
                raise InputError(f"[{name}] {f.name} must be {type(default).__name__}, found "
                                 f"{got!r}", path)
        return obj

    recon = section("recon", ReconParams)
    anatomy = section("anatomy", AnatomyParams)
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise InputError("[run] must be a table", path)
    known_run = {"workers": int, "threads_per_worker": int, "memory_limit": str,
                 "scheduler": str, "gd_entity": str}
    unknown = sorted(set(run) - set(known_run))
    if unknown:
        raise InputError(f"unknown key(s) {unknown} in [run]; known: {sorted(known_run)}", path)
    for key, kind in known_run.items():
        value = run.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (
                kind is int and value < 1):
            want = "a positive integer" if kind is int else "a string"
            raise InputError(f"[run] {key} must be {want}, found {value!r}", path)
    gd = str(run.get("gd_entity", "gadolinium"))
    return (SubjectParams(recon=recon, anatomy=anatomy, gd_entity=gd),
            {k: run[k] for k in known_run if k in run and k != "gd_entity"})


# --------------------------------------------------------------------------------------------
# the client


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def default_workers(n_units: int, memory_per_subject_gb: float = 4.0) -> int:
    """Workers for a local run: one per core, at most one per 4 GB of RAM and per unit."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        total = 8.0
    return max(1, min(_cpus(), int(total // memory_per_subject_gb) or 1, n_units))


def _client(scheduler: str | None, workers: int, threads: int, memory_limit: str | None):
    import dask
    from distributed import Client, LocalCluster

    # the scheduler's routine messages are not the user's business; warnings still show
    logging.getLogger("distributed").setLevel(logging.WARNING)

    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    env = {"QSMIRON_FFT_WORKERS": str(threads), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS":
           str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               memory_limit=memory_limit or "auto", dashboard_address=None,
                               silence_logs=logging.ERROR, env=env)
    return Client(cluster), cluster


def _stage_of(root: Path, unit: Unit) -> str:
    try:
        return (root / _STAGING / unit.label / _STAGE_FILE).read_text()
    except OSError:
        return "starting"


def run_cohort(
    bids_dir: str | Path,
    deriv_dir: str | Path,
    participant_labels: Sequence[str] | None = None,
    params: SubjectParams | None = None,
    workers: int | None = None,
    memory_limit: str | None = None,
    scheduler: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    poll_seconds: float = 0.5,
    threads_per_worker: int | None = None,
) -> CohortResult:
    """Run a BIDS dataset through recon -> anatomy -> measure on Dask; write the table.

    Parameters
    ----------
    bids_dir : str or Path
        BIDS dataset (readable by the workers at the same path).
    deriv_dir : str or Path
        Derivatives folder; outputs go to ``DERIV/qsmiron/``.
    participant_labels : sequence of str, optional
        Subjects to run (default all).
    params : SubjectParams, optional
        Parameters (part of the resume key).
    workers : int, optional
        Worker processes of the local cluster (default :func:`default_workers`); each gets
        ``cores // workers`` threads. Ignored with ``scheduler``.
    memory_limit : str, optional
        Memory limit per local worker (``"4GB"``; default: the machine's memory shared
        evenly). A worker exceeding it is restarted and its subject recorded as failed.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``), e.g. one whose workers
        dask-jobqueue submitted to SLURM or PBS.
    progress : callable, optional
        Called with a :class:`Progress` at start, at each finished unit and about every
        ``poll_seconds`` while waiting.
    poll_seconds : float
        Progress refresh interval, s.
    threads_per_worker : int, optional
        Threads of each local worker (FFT, ITK, BLAS); default the cores divided among the
        workers. Results depend slightly on ITK's thread count (multi-threaded sums); one
        thread makes a subject's result independent of how the run was split.

    Returns
    -------
    CohortResult
    """
    from distributed import CancelledError

    t0 = time.perf_counter()
    bids = Path(bids_dir).resolve()
    deriv = Path(deriv_dir).resolve()
    if not bids.is_dir():
        raise InputError("BIDS folder not found", bids)
    units = select_units(bids, participant_labels)
    n_workers = workers if workers is not None else default_workers(len(units))
    if n_workers < 1:
        raise InputError(f"--workers must be at least 1, found {n_workers}")
    threads = (threads_per_worker if threads_per_worker is not None
               else max(1, _cpus() // n_workers))
    if threads < 1:
        raise InputError(f"--threads-per-worker must be at least 1, found {threads}")
    p = params or SubjectParams()
    root = deriv / "qsmiron"
    write_dataset_description(root, "qsmiron derivatives", dataset_type="derivative",
                              generated_by=[{"Name": "qsmiron", "Version": __version__}],
                              overwrite=False)
    ignore = root / ".bidsignore"
    if not ignore.exists():
        atomic_write_bytes(ignore, f"{_LOGS}/\nmeasures.*\n".encode())
    client, cluster = _client(scheduler, n_workers, threads, memory_limit)
    state = Progress(total=len(units))
    records: dict[Unit, dict[str, Any]] = {}
    say = progress or (lambda _p: None)
    try:
        futures = {
            client.submit(process_unit, str(bids), str(deriv), u, p,
                          None if scheduler else threads, pure=False,
                          key=f"qsmiron-{u.label}-{uuid.uuid4().hex[:8]}"): u
            for u in units
        }
        say(state)
        pending = dict(futures)
        while pending:
            finished = [f for f in pending if f.done()]
            for fut in finished:
                unit = pending.pop(fut)
                try:
                    rec = fut.result()
                except (Exception, CancelledError) as exc:  # the worker died or was lost
                    stage = _stage_of(root, unit).split(":")[0]
                    rec = _failed_record(unit, stage, f"the worker running it was lost "
                                         f"({type(exc).__name__}: {exc}); out of memory? "
                                         f"See {root / _LOGS / unit.label}.log")
                    _commit(root, unit, root / _STAGING / unit.label / "qsmiron", rec)
                    rec = {**rec, "skipped": False}
                records[unit] = rec
                state.done += 1
                state.failed += rec.get("status") != "ok"
                state.skipped += bool(rec.get("skipped"))
                state.last = rec
            keys = {k for ks in client.processing().values() for k in ks} if pending else set()
            state.running = {u.label: _stage_of(root, u) for f, u in pending.items()
                             if f.key in keys}
            say(state)
            if pending:
                time.sleep(poll_seconds)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    table = write_table(bids, deriv)
    ordered = [records[u] for u in units]
    n_failed = sum(r.get("status") != "ok" for r in ordered)
    n_skipped = sum(bool(r.get("skipped")) for r in ordered)
    return CohortResult(table=table, records=ordered, n_ok=len(ordered) - n_failed - n_skipped,
                        n_failed=n_failed, n_skipped=n_skipped,
                        seconds=time.perf_counter() - t0)
