"""Run pieces of work -- all-atom references, CG runs, analyses, trainings -- on a Dask cluster.

The harness and the study describe their work as :class:`Piece` objects: a function, its arguments,
and the pieces whose results it needs (:class:`Result` placeholders in its arguments, or ``after``
for order only). :func:`run_pieces` runs such a graph

* in this process, one piece after another (``cluster=None``: what the Python API does by default);
* on a local Dask cluster sized to the machine (``ClusterConfig()``, the command line's default): one
  single-threaded worker process per CPU core, or one worker per GPU, pinned to it with
  ``CUDA_VISIBLE_DEVICES`` and offering a ``GPU`` resource; never more workers than pieces can run at once;
* on an existing Dask cluster of many machines (``ClusterConfig(scheduler="tcp://host:8786")``,
  ``--scheduler``). Its workers must see the output folder under the same path (a shared file
  system) and have openmm-cgnn installed.

A piece that raises does not stop the others: its result is a :class:`PieceFailure` (message and
traceback), and the pieces that need it are not run (a :class:`PieceFailure` whose ``cause`` names
the failed piece). Each piece writes its own files (atomically) and reuses what an earlier run
finished; the graph itself holds no state, so rerunning it after an interruption redoes only the
pieces whose outputs are missing.

Use::

    from openmm_cgnn.cluster import ClusterConfig, Piece, Result, run_pieces

    pieces = [Piece("ref/300K", run_reference_at, (300.0,)),
              Piece("cg/300K", run_cg_from, (Result("ref/300K"),), gpu=True)]
    results = run_pieces(pieces, ClusterConfig(workers=2))
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import validation as V
from .errors import CGNNError, ConfigError

__all__ = ["ClusterConfig", "ClusterError", "Piece", "Result", "PieceFailure", "Runner", "open_runner", "runner_for",
           "run_pieces", "failures", "graph_width", "local_worker_count", "visible_gpus", "DASK_MISSING"]

DASK_MISSING = ("Dask is not installed (openmm-cgnn depends on it); install it with: pip install "
                "'dask==2026.8.0' 'distributed==2026.8.0', or use --workers 1 to run in this process")


class ClusterError(CGNNError, RuntimeError):
    """The Dask cluster cannot be started or reached (a wrong --scheduler address, Dask missing)."""


@dataclass
class ClusterConfig:
    """Where the pieces of a sweep run.

    ``scheduler``: address of a running Dask scheduler (``tcp://host:8786``, or a scheduler JSON file
    written by ``dask scheduler --scheduler-file``); None starts a local cluster. ``workers``: the
    local cluster's worker processes; None sizes it to the machine (one per GPU when ``gpus`` allows,
    else one per ``threads_per_worker`` CPU cores, never more than the pieces that can run at once);
    1 runs everything in this process without Dask. ``threads_per_worker``: CPU threads each local
    worker gives its piece (OpenMM CPU threads, torch and OpenMP threads). ``gpus``: one worker per
    visible GPU (None: when a GPU is visible, True: required, False: never). ``processes``: workers
    are processes (False: threads of this process, for tests). ``dashboard``: the address of the
    local cluster's dashboard (e.g. ":8787"); None: none. ``connect_timeout``: seconds to wait for
    ``scheduler``.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    gpus: bool | None = None
    processes: bool = True
    dashboard: str | None = None
    connect_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.workers is not None:
            V.integer(self.workers, "workers", 1)
        V.integer(self.threads_per_worker, "threads_per_worker", 1)
        V.positive(self.connect_timeout, "connect_timeout", "s")
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler.strip()):
            raise ConfigError(f"scheduler must be an address such as tcp://host:8786, got {self.scheduler!r}",
                              "scheduler")
        if self.scheduler is not None and self.workers is not None:
            raise ConfigError("--workers sizes a local cluster; with --scheduler the cluster's own workers run "
                              "the pieces: give one of them", "workers")


@dataclass(frozen=True)
class Result:
    """Placeholder, in a piece's arguments, for the return value of the piece named ``key``."""

    key: str


@dataclass(frozen=True)
class Piece:
    """One piece of work: ``fn(*args, **kwargs)`` with every :class:`Result` in ``args``/``kwargs``
    (also inside lists, tuples and dicts) replaced by that piece's return value.

    ``after``: keys of pieces that must finish first although their results are not passed.
    ``gpu``: the piece runs a simulation that wants a GPU; on a cluster whose workers offer a ``GPU``
    resource it takes one. ``torch_threads``: torch intra-op threads while it runs (None: leave as is).
    ``label``: the text of progress lines (default ``key``).
    """

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()
    gpu: bool = False
    torch_threads: int | None = None
    label: str | None = None

    def needs(self) -> list[str]:
        """Keys of the pieces this one waits for (results used and ``after``), in order, once each."""
        found: list[str] = []
        _walk_results((self.args, dict(self.kwargs)), found)
        return list(dict.fromkeys(found + list(self.after)))


@dataclass(frozen=True)
class PieceFailure:
    """The result of a piece that raised (``cause`` None) or was not run because a piece it needs
    failed (``cause``: that piece's key). ``message``: one line; ``traceback``: the full text;
    ``error``: the exception itself where it could be sent back (None otherwise)."""

    key: str
    message: str
    traceback: str = ""
    cause: str | None = None
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def reraise(self) -> None:
        """Raise the piece's error here: a user error (CGNNError) as it was, any other exception with the
        piece's traceback as a note, and a ClusterError where the exception did not come back."""
        if isinstance(self.error, CGNNError):
            raise self.error
        if self.error is not None:
            if self.traceback:
                self.error.add_note(f"in piece {self.key!r}:\n{self.traceback.rstrip()}")
            raise self.error
        raise ClusterError(f"piece {self.key!r} failed: {self.message}")


def _walk_results(obj: Any, found: list[str]) -> None:
    if isinstance(obj, Result):
        found.append(obj.key)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            _walk_results(v, found)
    elif isinstance(obj, dict):
        for v in obj.values():
            _walk_results(v, found)


def _substitute(obj: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(obj, Result):
        return values[obj.key]
    if isinstance(obj, list):
        return [_substitute(v, values) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_substitute(v, values) for v in obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, values) for k, v in obj.items()}
    return obj


def _check_graph(pieces: Sequence[Piece]) -> list[Piece]:
    """The pieces in an order where every piece comes after those it needs; ValueError for an unknown
    key, a key given twice or a cycle (programming errors of the caller)."""
    by_key: dict[str, Piece] = {}
    for p in pieces:
        if p.key in by_key:
            raise ValueError(f"two pieces have the key {p.key!r}")
        by_key[p.key] = p
    for p in pieces:
        missing = [k for k in p.needs() if k not in by_key]
        if missing:
            raise ValueError(f"piece {p.key!r} needs {missing}, which are not in the graph")
    ordered: list[Piece] = []
    state: dict[str, int] = {}

    def visit(p: Piece, path: tuple[str, ...]) -> None:
        if state.get(p.key) == 2:
            return
        if state.get(p.key) == 1:
            raise ValueError(f"the pieces form a cycle: {' -> '.join(path + (p.key,))}")
        state[p.key] = 1
        for k in p.needs():
            visit(by_key[k], path + (p.key,))
        state[p.key] = 2
        ordered.append(p)

    for p in pieces:
        visit(p, ())
    return ordered


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sendable(exc: BaseException) -> BaseException | None:
    """``exc`` without its traceback if it survives pickling (to come back from a worker), else None."""
    import pickle

    try:
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return copy if type(copy) is type(exc) else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _execute(key: str, fn: Callable[..., Any], args: tuple, kwargs: dict, torch_threads: int | None,
             needed: dict[str, Any]) -> Any:
    """Run one piece (in a worker or in this process): its result, or a PieceFailure -- never raises."""
    for k, v in needed.items():
        if isinstance(v, PieceFailure):
            root = v.cause or v.key
            return PieceFailure(key, f"not run: {root} failed ({v.message})", cause=root)
    try:
        with _torch_threads(torch_threads):
            return fn(*_substitute(args, needed), **_substitute(kwargs, needed))
    except Exception as exc:   # recorded, so that the other pieces still run
        return PieceFailure(key, _one_line(exc), "".join(traceback.format_exception(exc)), error=_sendable(exc))


# ---------------------------------------------------------------------------------------------
# sizing the local cluster
# ---------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty: none)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        if not ids or ids[0] in ("-1", "NoDevFiles"):
            return []
    else:
        ids = None
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        n = 0
    if ids is None:
        return [str(i) for i in range(n)]
    return ids[:n]


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_worker_count(config: ClusterConfig, width: int | None = None) -> tuple[int, list[str]]:
    """(workers, GPU ids to pin them to) of a local cluster for ``config``; ``width``: how many pieces can
    run at once, which caps an automatic size. GPU ids are empty for CPU workers."""
    gpus = visible_gpus() if config.gpus is not False else []
    if config.gpus and not gpus:
        raise ClusterError("GPU workers were asked for, but no CUDA device is visible (check CUDA_VISIBLE_DEVICES "
                           "and the driver), or leave gpus unset to use the CPU")
    if config.workers is not None:
        n = config.workers
    else:
        n = len(gpus) if gpus else max(1, _cpu_count() // config.threads_per_worker)
        if width is not None:
            n = max(1, min(n, width))
    if gpus:
        if n > len(gpus):
            raise ClusterError(f"{n} GPU workers asked for, but {len(gpus)} GPU(s) are visible; use --workers "
                               f"{len(gpus)} or fewer (one worker per GPU)")
        return n, gpus[:n]
    return n, []


def graph_width(pieces: Sequence[Piece]) -> int:
    """The most pieces that can run at the same time: the largest level of the dependency graph (a
    cheap bound, exact for the harness's chains and the study's fan-outs)."""
    level: dict[str, int] = {}
    for p in _check_graph(pieces):
        level[p.key] = 1 + max((level[k] for k in p.needs()), default=-1)
    counts: dict[int, int] = {}
    for v in level.values():
        counts[v] = counts.get(v, 0) + 1
    return max(counts.values(), default=0)


# ---------------------------------------------------------------------------------------------
# runners
# ---------------------------------------------------------------------------------------------
class Runner:
    """Runs graphs of pieces; :func:`open_runner` makes one. This base class runs them in this process."""

    description = "serial (this process)"
    parallel = False

    def run(self, pieces: Sequence[Piece], progress: bool = False,
            on_done: Callable[[Piece, Any], None] | None = None) -> dict[str, Any]:
        """Run ``pieces``; {key: result or PieceFailure}, in the order of ``pieces``. ``on_done(piece,
        result)`` is called in this process as each piece finishes; the lines it returns (if any) are
        printed (above the progress bar of a cluster)."""
        results: dict[str, Any] = {}
        for p in _check_graph(pieces):
            needed = {k: results[k] for k in p.needs()}
            results[p.key] = _execute(p.key, p.fn, p.args, dict(p.kwargs), p.torch_threads, needed)
            for line in (on_done(p, results[p.key]) if on_done is not None else None) or ():
                print(line, flush=True)
        return {p.key: results[p.key] for p in pieces}

    def close(self) -> None:
        pass


class DaskRunner(Runner):
    """Runs graphs of pieces on a Dask cluster (``client``); a local cluster it started is closed with it."""

    parallel = True

    def __init__(self, client: Any, cluster: Any | None, description: str):
        self.client = client
        self.cluster = cluster
        self.description = description

    def _gpu_resources(self) -> bool:
        workers = self.client.scheduler_info().get("workers", {})
        return any((w.get("resources") or {}).get("GPU") for w in workers.values())

    def run(self, pieces: Sequence[Piece], progress: bool = False,
            on_done: Callable[[Piece, Any], None] | None = None) -> dict[str, Any]:
        from distributed import as_completed

        ordered = _check_graph(pieces)
        token = uuid.uuid4().hex[:8]
        use_gpu = self._gpu_resources()
        futures: dict[str, Any] = {}
        by_future: dict[str, Piece] = {}
        for p in ordered:
            needed = {k: futures[k] for k in p.needs()}
            fut = self.client.submit(_execute, p.key, p.fn, p.args, dict(p.kwargs), p.torch_threads, needed,
                                     key=f"{_dask_name(p.key)}-{token}", pure=False, retries=0,
                                     resources={"GPU": 1} if (p.gpu and use_gpu) else None)
            futures[p.key] = fut
            by_future[fut.key] = p
        results: dict[str, Any] = {}
        bar = _progress_bar(len(ordered), progress)
        try:
            for fut in as_completed(list(futures.values())):
                p = by_future[fut.key]
                try:
                    value = fut.result()
                except Exception as exc:   # the worker died (KilledWorker), a result that cannot be sent ...
                    failed = [k for k in p.needs() if isinstance(results.get(k), PieceFailure)]
                    if failed:
                        root = results[failed[0]].cause or failed[0]
                        value = PieceFailure(p.key, f"not run: {root} failed", cause=root)
                    else:
                        value = PieceFailure(p.key, _one_line(exc), "".join(traceback.format_exception(exc)))
                results[p.key] = value
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(_short(p, value), refresh=False)
                for line in (on_done(p, value) if on_done is not None else None) or ():
                    if bar is not None:
                        bar.write(line, file=sys.stdout)
                    else:
                        print(line, flush=True)
        finally:
            if bar is not None:
                bar.close()
            for fut in futures.values():
                fut.release()
        return {p.key: results[p.key] for p in pieces}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


def _dask_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def _short(p: Piece, value: Any) -> str:
    status = "failed" if isinstance(value, PieceFailure) else "done"
    return f"{p.label or p.key}: {status}"


def _progress_bar(total: int, enabled: bool):
    """A bar of finished pieces on a terminal (in a log file the printed lines say the same)."""
    if not enabled or total == 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="pieces", unit="piece", file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0)


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError(DASK_MISSING) from None
    return distributed


def _local_cluster(config: ClusterConfig, n: int, gpus: list[str]):
    """A local Dask cluster of ``n`` single-piece workers (pinned to ``gpus`` when given)."""
    import logging

    distributed = _import_distributed()
    threads = str(config.threads_per_worker)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "OPENMM_CPU_THREADS": threads}
    common = dict(dashboard_address=config.dashboard, silence_logs=logging.ERROR, memory_limit=0)
    if not config.processes:
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=False, **common)
    if not gpus:
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env, **common)
    # one worker per GPU, each seeing only its own device, and a GPU resource the simulations ask for
    workers = {f"gpu-{g}": {"cls": distributed.Nanny,
                            "options": {"nthreads": 1, "memory_limit": 0, "resources": {"GPU": 1},
                                        "env": {**env, "CUDA_VISIBLE_DEVICES": g}, "silence_logs": logging.ERROR}}
               for g in gpus}
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": config.dashboard}}
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def open_runner(config: ClusterConfig | None, width: int | None = None) -> Runner:
    """A runner for ``config``: None or a local cluster of one worker runs in this process; otherwise a
    local Dask cluster (started here, closed with the runner) or a client of ``config.scheduler``.
    ``width``: how many pieces can run at once (caps an automatic local size)."""
    if config is None:
        return Runner()
    if config.scheduler is None:
        n, gpus = local_worker_count(config, width)
        if n <= 1 and not gpus:
            return Runner()
        distributed = _import_distributed()
        try:
            cluster = _local_cluster(config, n, gpus)
            client = distributed.Client(cluster)
        except Exception as exc:
            raise ClusterError(f"cannot start a local Dask cluster of {n} workers: {_one_line(exc)}; use "
                               "--workers 1 to run in this process") from None
        kind = f"{n} GPU worker(s) ({', '.join(gpus)})" if gpus else \
            f"{n} worker {'process' if config.processes else 'thread'}(es) x {config.threads_per_worker} thread(s)"
        return DaskRunner(client, cluster, f"local Dask cluster, {kind}")
    distributed = _import_distributed()
    address = config.scheduler.strip()
    try:
        if address.endswith(".json") and os.path.isfile(address):
            client = distributed.Client(scheduler_file=address, timeout=f"{config.connect_timeout}s")
        else:
            client = distributed.Client(address, timeout=f"{config.connect_timeout}s")
    except Exception as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address!r} ({_one_line(exc)}); start one with "
                           "'dask scheduler' and workers with 'dask worker ADDRESS', or leave out --scheduler to "
                           "use a local cluster") from None
    info = client.scheduler_info().get("workers", {})
    n_gpu = sum(int((w.get("resources") or {}).get("GPU", 0)) for w in info.values())
    return DaskRunner(client, None, f"Dask scheduler {address}, {len(info)} worker(s)"
                                    + (f", {n_gpu} GPU(s)" if n_gpu else ""))


@contextlib.contextmanager
def runner_for(config: ClusterConfig | Runner | None, width: int | None = None,
               cpu_only: bool = False) -> Iterator[Runner]:
    """:func:`open_runner` as a context manager that closes the runner (and a local cluster it started);
    an open Runner is used as it is and stays open. ``cpu_only``: the pieces will not use a GPU (e.g. the
    CPU platform was asked for), so an automatic local cluster is sized by CPU cores."""
    if isinstance(config, Runner):
        yield config
        return
    if cpu_only and config is not None and config.gpus is None:
        config = replace(config, gpus=False)
    runner = open_runner(config, width)
    try:
        yield runner
    finally:
        runner.close()


def run_pieces(pieces: Sequence[Piece], cluster: ClusterConfig | Runner | None = None, progress: bool = False,
               on_done: Callable[[Piece, Any], None] | None = None) -> dict[str, Any]:
    """Run a graph of pieces (see the module docstring); {key: result or PieceFailure} in the order of
    ``pieces``. ``cluster``: a ClusterConfig (a cluster is opened for this call and closed after it),
    an open :class:`Runner` (kept open), or None (this process)."""
    pieces = list(pieces)
    with runner_for(cluster, graph_width(pieces)) as runner:
        return runner.run(pieces, progress, on_done)


def failures(results: Mapping[str, Any]) -> dict[str, PieceFailure]:
    """The failed pieces of a :func:`run_pieces` result."""
    return {k: v for k, v in results.items() if isinstance(v, PieceFailure)}
