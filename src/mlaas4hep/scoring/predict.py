"""Score whole files with a bundle, in this process or a pool of workers, and write the scores out.

:func:`predict` checks everything it can before it reads an event (the bundle,
every file's tree and branches, the outputs), then cuts each file into chunks
of ``chunk_size`` entries and scores them on worker processes, as training
decodes (:mod:`mlaas4hep.io.executor`): each worker loads the bundle once and
runs :meth:`mlaas4hep.bundle.Predictor.predict_root` on the chunks it is given,
the preprocessing the model was trained and is served with, selection not
applied. The results come back in order, a few chunks in flight at a time, and
are written chunk by chunk (:mod:`.writers`), so memory stays bounded whatever
the size of the files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .. import bundle as bundle_mod
from ..bundle_spec import BundleSpec, InputError
from ..errors import ConfigError
from ..io import executor as executor_mod
from ..io import reader, urls
from ..io.chunk import Unit
from ..io.errors import BranchNotFoundError
from ..io.shuffle import plan_units
from .writers import SUFFIXES, open_writer, score_columns

DEFAULT_CHUNK = 100_000


@dataclass
class Output:
    """One written file: the input it scores, where it is, its entries and columns."""

    input: str
    path: Path
    entries: int
    ids: list[str]
    scores: list[str]


@dataclass
class _Plan:
    url: str
    out: Path
    entries: int
    ids: list[str]
    boundaries: list[int] | None = None  # clusters (TTree), row groups (Parquet), clusters (RNTuple)


def expand(files: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Local globs expanded (sorted), URLs kept; each file once, in the order given."""
    out: list[str] = []
    for f in files:
        f = str(f)
        if urls.is_local(f) and glob.has_magic(f):
            matches = sorted(glob.glob(urls.local_path(f)))
            if not matches:
                raise ConfigError(f"no file matches {f!r}")
            out += matches
            continue
        if urls.is_local(f):
            path = urls.local_path(f)
            if os.path.isdir(path):
                raise ConfigError(f"{f!r} is a directory: give its files, e.g. '{f.rstrip('/')}/*.root'")
            if not os.path.exists(path):
                raise ConfigError(f"no such file: {f!r}" + _near(path))
        out.append(f)
    if not out:
        raise ConfigError("no input files given")
    return list(dict.fromkeys(out))


def _near(path: str) -> str:
    """``; did you mean 'ttH_0.root'?`` from the names of the files beside a missing one."""
    from ..io.expr import did_you_mean

    try:
        names = os.listdir(os.path.dirname(path) or ".")
    except OSError:
        return ""
    return did_you_mean(os.path.basename(path), names)


def output_paths(inputs: list[str], out: str | os.PathLike[str], fmt: str, name: str) -> list[Path]:
    """``OUT/<input stem>_<name>.root`` per input; ``OUT`` itself for one input when it ends in the suffix."""
    suffix = SUFFIXES[fmt]
    out = Path(out)
    if out.suffix == suffix and not out.is_dir():
        if len(inputs) != 1:
            raise ConfigError(
                f"-o {str(out)!r} names one file but {len(inputs)} inputs are given: give a directory"
            )
        return [out]
    paths = [out / f"{Path(urls.local_path(u).split('?')[0]).stem}_{name}{suffix}" for u in inputs]
    seen: dict[Path, str] = {}
    for u, p in zip(inputs, paths):
        if p in seen:
            raise ConfigError(f"{seen[p]!r} and {u!r} would both be scored into {str(p)!r}: score them apart")
        seen[p] = u
    return paths


def _check_outputs(plans: list[_Plan], overwrite: bool) -> None:
    for p in plans:
        if urls.is_local(p.url) and p.out.resolve() == Path(urls.local_path(p.url)).resolve():
            raise ConfigError(f"the output {str(p.out)!r} is the input file itself")
        if p.out.exists() and not overwrite:
            raise ConfigError(f"{str(p.out)!r} exists; add --overwrite (overwrite=True) to replace it")


def _plan_file(
    url: str, out: Path, spec: BundleSpec, tree: str, ids: list[str], ids_given: bool, timeout: float
) -> _Plan:
    """Open one file's tree and check that it has what the model reads (every missing branch named)."""
    t = reader.get_tree(url, tree, timeout)
    assert spec.preprocessor is not None
    missing = [b for b in spec.preprocessor.inputs if b not in t]
    if missing:
        more = f" (and {', '.join(map(repr, missing[1:]))})" if len(missing) > 1 else ""
        raise BranchNotFoundError(
            url, missing[0], f"model {spec.name!r} reads it{more} from tree {tree!r}, as in training"
        )
    present = [i for i in ids if i in t]
    if ids_given and len(present) < len(ids):
        absent = [i for i in ids if i not in t]
        raise BranchNotFoundError(url, absent[0], "it was asked for as an event identifier")
    return _Plan(url, out, int(t.num_entries), present, _boundaries(t, spec.preprocessor.inputs + present))


def _boundaries(t: Any, branches: list[str]) -> list[int] | None:
    """Where a file's baskets of ``branches`` all begin (a TTree's clusters), or its row groups.

    Chunks then end on these entries where they can (:func:`mlaas4hep.io.formats.cuts`),
    so no basket is decompressed for two chunks that could have shared it.
    """
    bounds = getattr(t, "boundaries", None)
    if bounds:
        return list(bounds)
    try:
        return [int(e) for e in t.common_entry_offsets(filter_name=branches)]
    except Exception:  # not a TTree of uproot's, or baskets it cannot list
        return None


@dataclass
class ScoreTask:
    """Score one unit (file, entry range): picklable, sent to the workers; the bundle is loaded once per process."""

    bundle: str
    urls: list[str]
    tree: str
    ids: list[list[str]]
    timeout: float = 30.0
    threads: int | None = None

    def __call__(self, unit: Unit) -> dict[str, np.ndarray]:
        for url in self.urls[: unit.file]:  # files are scored in order: close those done
            reader.forget(url, self.tree)
        predictor = _predictor(self.bundle, self.threads)
        url = self.urls[unit.file]
        parts = predictor.predict_root(
            url,
            self.tree,
            unit.start,
            unit.stop,
            chunk_size=unit.stop - unit.start,
            timeout=self.timeout,
            ids=tuple(self.ids[unit.file]),
        )
        try:
            return next(iter(parts))
        except (ConfigError, InputError) as err:  # the preprocessing refused the file's values
            raise ConfigError(f"cannot score entries {unit.start}-{unit.stop} of {url!r}: {err}") from None


_PREDICTORS: dict[tuple[str, int | None], bundle_mod.Predictor] = {}


def _predictor(path: str, threads: int | None) -> bundle_mod.Predictor:
    key = (path, threads)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = bundle_mod.load(path, threads=threads)
    return _PREDICTORS[key]


def predict(
    bundle: str | os.PathLike[str],
    files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    format: str = "root",
    tree: str | None = None,
    name: str = "scores",
    chunk_size: int = DEFAULT_CHUNK,
    workers: int | None = None,
    ids: Sequence[str] | None = None,
    overwrite: bool = False,
    timeout: float = 30.0,
    show_progress: bool | None = None,
) -> list[Output]:
    """Score every entry of ``files`` with a bundle and write one score file per input file.

    Args:
        bundle (str or path): the bundle directory (``runs/NAME/bundle``, or the run's
            directory ``runs/NAME``).
        files (str, path or list of them): ROOT files (local paths, globs, ``root://``,
            ``http(s)://``); Parquet and RNTuple inputs are read as the io layer reads them.
        out (str or path): the output directory (created), or with one input file a
            file name ending in ``.root`` / ``.parquet``.
        format (str, default ``"root"``): ``"root"`` (a friend tree per input file) or
            ``"parquet"``.
        tree (None or str): the input tree (default: the bundle's, e.g. ``Events``).
        name (str, default ``"scores"``): the friend tree's name, and the outputs'
            ``<input stem>_<name>.root``.
        chunk_size (int, default 100000): entries scored at a time (memory bound).
        workers (None or int): worker processes (None: one per core; 0: this process).
        ids (None or list of str): event identifier branches to write beside the scores
            (default: the bundle's dataset ``identifier``, else ``run``,
            ``luminosityBlock``, ``event``; those a file lacks are left out, while
            ids given here must exist).
        overwrite (bool, default False): replace existing outputs (else an error).
        timeout (float, default 30): seconds for each remote open or read.
        show_progress (None or bool): a progress bar (None: on a terminal only).

    Every output holds ``entry`` (the entry number in the input tree), the ids and
    ``score`` (a binary classifier's probability of label 1) or ``score_<label>``
    per class, float32, one row per input entry in the input's order: the
    bundle's selection is not applied, so a ROOT friend tree lines up with its
    input tree (``tree.AddFriend("scores", "ttH_0_scores.root")``).

    Returns the list of :class:`Output`, one per input file. Raises
    :class:`~mlaas4hep.bundle.BundleError` for a bundle that cannot be used,
    :class:`~mlaas4hep.io.BranchNotFoundError` naming the file and branch a file
    lacks, :class:`~mlaas4hep.errors.ConfigError` for bad arguments; nothing is
    written before all the files are checked.
    """
    if format not in SUFFIXES:
        raise ConfigError(f"format must be one of {sorted(SUFFIXES)}, got {format!r}")
    if not name.isidentifier():
        raise ConfigError(f"the friend tree name must be a plain name such as 'scores', got {name!r}")
    if int(chunk_size) < 1:
        raise ConfigError(f"chunk_size must be 1 or more, got {chunk_size}")
    path = bundle_mod.resolve_dir(bundle)
    spec = BundleSpec(bundle_mod.read_meta(path))
    if spec.preprocessor is None:
        raise bundle_mod.BundleError(
            f"model {spec.name!r} has no preprocessing, so it cannot read ROOT files: "
            "score feature vectors with mlaas4hep.bundle.load(path).predict(x)"
        )
    tree = tree or spec.preprocessor.tree
    inputs = expand([files] if isinstance(files, (str, os.PathLike)) else files)
    outs = output_paths(inputs, out, format, name)
    id_names = list(ids) if ids is not None else list(spec.identifier)
    plans = [_plan_file(u, o, spec, tree, id_names, ids is not None, timeout) for u, o in zip(inputs, outs)]
    _check_outputs(plans, overwrite)
    columns = score_columns(spec.labels, spec.n_outputs)
    n_workers = executor_mod.default_workers() if workers is None else int(workers)
    task = ScoreTask(
        str(path.resolve()), inputs, tree, [p.ids for p in plans], timeout, 1 if n_workers else None
    )
    units = plan_units([p.entries for p in plans], chunk_size, -1, [p.boundaries for p in plans])
    for p in plans:
        p.out.parent.mkdir(parents=True, exist_ok=True)
    from .. import progress

    pool = executor_mod.get_executor("local", n_workers)
    results = executor_mod.ordered_map(pool, task, units, prefetch=2 * max(1, n_workers))
    total = sum(p.entries for p in plans)
    with progress.bar("predict", total=total, show=show_progress) as bar:
        return [
            _write_file(i, p, spec, tree, format, name, columns, results, bar, path)
            for i, p in enumerate(plans)
        ]


def _write_file(
    index: int,
    plan: _Plan,
    spec: BundleSpec,
    tree: str,
    fmt: str,
    name: str,
    columns: list[str],
    results: Iterator[tuple[Unit, Any]],
    bar: Any,
    bundle: Path,
) -> Output:
    """Write one input's score file from its units' results (the next ones of ``results``)."""
    provenance = {
        "bundle": str(bundle),
        "model": spec.name,
        "version": spec.version,
        "labels": spec.labels,
        "input": plan.url,
        "tree": tree,
        "producer": f"mlaas4hep {__version__}",
    }
    writer = open_writer(fmt, plan.out, name, provenance)
    try:
        if plan.entries == 0:
            writer.write(_empty(plan, spec, tree, columns))
        done = 0
        while done < plan.entries:
            unit, future = next(results)
            assert unit.file == index
            part = future.result()
            writer.write(_columns(part, plan.ids, columns))
            done += unit.stop - unit.start
            bar.advance(unit.stop - unit.start, info=Path(urls.local_path(plan.url)).name)
        writer.close()
        reader.forget(plan.url, tree)  # its memory map and uproot's array cache (100 MB a file)
    except BaseException:
        writer.abort()
        raise
    return Output(plan.url, plan.out, writer.entries, list(plan.ids), columns)


def _columns(part: dict[str, np.ndarray], ids: list[str], columns: list[str]) -> dict[str, np.ndarray]:
    out = {"entry": part["entry"]}
    out.update({i: np.asarray(part[i]) for i in ids})
    scores = np.asarray(part["scores"], dtype=np.float32)
    out.update({c: np.ascontiguousarray(scores[:, k]) for k, c in enumerate(columns)})
    return out


def _empty(plan: _Plan, spec: BundleSpec, tree: str, columns: list[str]) -> dict[str, np.ndarray]:
    """Zero rows with the columns' types (the id types read from the file)."""
    arrays = reader.read_arrays(plan.url, tree, plan.ids, 0, 0) if plan.ids else {}
    out = {"entry": np.zeros(0, np.int64)}
    out.update({i: np.asarray(arrays[i]) for i in plan.ids})
    out.update({c: np.zeros(0, np.float32) for c in columns})
    return out
