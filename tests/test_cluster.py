"""Graphs of pieces run in this process and on small local Dask clusters give the same results; a failed
piece stops only the pieces that need it; local clusters are sized and pinned as documented."""

import os
import threading

import pytest

from openmm_cgnn.cluster import (ClusterConfig, ClusterError, Piece, PieceFailure, Result, failures, graph_width,
                                 local_worker_count, open_runner, run_pieces, runner_for)
from openmm_cgnn.errors import CGNNError, ConfigError

THREADS = ClusterConfig(workers=2, processes=False)   # two worker threads of this process: starts in ~1 s


def add(a, b=0):
    return a + b


def total(values):
    return sum(values)


def fail(x):
    raise ValueError(f"no good: {x}")


_BARRIER = threading.Barrier(2, timeout=20)


def meet(name):
    """Wait for a second piece at the barrier (worker threads of this process share it)."""
    _BARRIER.wait()
    return name


def _graph():
    """a=1, b=a+10, c=a+b (via a list and a dict), d fails on c, e needs d, f independent."""
    return [
        Piece("a", add, (1,)),
        Piece("b", add, (Result("a"),), {"b": 10}),
        Piece("c", total, ([Result("a"), {"x": Result("b")}["x"]],)),
        Piece("d", fail, (Result("c"),)),
        Piece("e", add, (Result("d"), 1)),
        Piece("f", add, (5, 5), after=("a",)),
    ]


def _check(results):
    assert list(results) == ["a", "b", "c", "d", "e", "f"]
    assert (results["a"], results["b"], results["c"], results["f"]) == (1, 11, 12, 10)
    d, e = results["d"], results["e"]
    assert isinstance(d, PieceFailure) and d.cause is None
    assert d.message == "ValueError: no good: 12" and "raise ValueError" in d.traceback
    assert isinstance(d.error, ValueError)             # the exception itself came back (from a worker too)
    assert isinstance(e, PieceFailure) and e.cause == "d" and "not run: d failed" in e.message
    assert set(failures(results)) == {"d", "e"}


def test_serial_and_dask_runs_give_the_same_results():
    done = []
    serial = run_pieces(_graph(), None, on_done=lambda p, v: done.append(p.key))
    _check(serial)
    assert done == ["a", "b", "c", "d", "e", "f"]     # every piece reported once, in dependency order here
    with runner_for(THREADS) as runner:
        assert runner.parallel and "2 worker thread" in runner.description
        done.clear()
        parallel = runner.run(_graph(), on_done=lambda p, v: done.append(p.key))
        _check(parallel)
        assert sorted(done) == ["a", "b", "c", "d", "e", "f"]
        assert done.index("a") < done.index("b") < done.index("c") < done.index("d")
        # the same runner serves a second graph
        assert runner.run([Piece("x", add, (2, 3))]) == {"x": 5}


def test_independent_pieces_run_at_the_same_time_on_two_workers():
    # each piece waits at a barrier for the other: they finish only if both run at once
    pieces = [Piece("p", meet, ("p",)), Piece("q", meet, ("q",)), Piece("r", add, (Result("p"),), {"b": "+r"})]
    assert graph_width(pieces) == 2
    assert run_pieces(pieces, THREADS) == {"p": "p", "q": "q", "r": "p+r"}


def test_bad_graphs_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="not in the graph"):
        run_pieces([Piece("a", add, (Result("nope"),))])
    with pytest.raises(ValueError, match="cycle"):
        run_pieces([Piece("a", add, (Result("b"),)), Piece("b", add, (Result("a"),))])
    with pytest.raises(ValueError, match="two pieces have the key"):
        run_pieces([Piece("a", add, (1,)), Piece("a", add, (2,))])


def test_local_cluster_size_follows_the_machine_and_the_work(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")          # no GPU
    cores = len(os.sched_getaffinity(0))
    assert local_worker_count(ClusterConfig()) == (cores, [])
    assert local_worker_count(ClusterConfig(), width=1) == (1, [])       # one chain: no cluster needed
    assert local_worker_count(ClusterConfig(workers=3), width=1) == (3, [])   # asked for: as asked
    assert local_worker_count(ClusterConfig(threads_per_worker=cores)) == (1, [])
    assert type(open_runner(ClusterConfig(), width=1)).__name__ == "Runner"   # runs in this process
    with pytest.raises(ClusterError, match="no CUDA device is visible"):
        local_worker_count(ClusterConfig(gpus=True))
    # GPUs: one worker per visible device, pinned by its CUDA_VISIBLE_DEVICES entry
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_worker_count(ClusterConfig()) == (2, ["3", "5"])
    assert local_worker_count(ClusterConfig(), width=1) == (1, ["3"])
    assert local_worker_count(ClusterConfig(gpus=False), width=8) == (min(cores, 8), [])
    with pytest.raises(ClusterError, match="one worker per GPU"):
        local_worker_count(ClusterConfig(workers=3))


def test_gpu_workers_are_pinned_and_offer_a_gpu_resource(monkeypatch):
    # two worker processes pinned to (fake) devices 3 and 5; every piece that wants a GPU takes one
    import openmm_cgnn.cluster as C

    monkeypatch.setattr(C, "visible_gpus", lambda: ["3", "5"])
    with runner_for(ClusterConfig()) as runner:
        assert "2 GPU worker(s) (3, 5)" in runner.description
        workers = runner.client.scheduler_info()["workers"].values()
        assert sorted(w["resources"].get("GPU") for w in workers) == [1, 1]
        pieces = [Piece(f"sim{i}", os.getenv, ("CUDA_VISIBLE_DEVICES",), gpu=True) for i in range(4)]
        pieces += [Piece("threads", os.getenv, ("OPENMM_CPU_THREADS",))]
        res = runner.run(pieces)
    assert {res[f"sim{i}"] for i in range(4)} <= {"3", "5"} and res["threads"] == "1"


def test_an_existing_scheduler_is_used_and_a_wrong_address_is_one_clear_error():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        res = run_pieces(_graph(), ClusterConfig(scheduler=cluster.scheduler_address))
        _check(res)
    with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'") as info:
        open_runner(ClusterConfig(scheduler="tcp://127.0.0.1:9", connect_timeout=1))
    assert "\n" not in str(info.value) and isinstance(info.value, CGNNError)


def test_bad_cluster_settings_and_missing_dask(monkeypatch):
    with pytest.raises(ConfigError, match="workers must be"):
        ClusterConfig(workers=0)
    with pytest.raises(ConfigError, match="give one of them"):
        ClusterConfig(scheduler="tcp://host:8786", workers=2)
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)        # as if Dask were not installed
    with pytest.raises(ClusterError, match="pip install 'dask==2026.8.0' 'distributed==2026.8.0'"):
        open_runner(ClusterConfig(workers=2))
    assert run_pieces(_graph()[:2], ClusterConfig(workers=1)) == {"a": 1, "b": 11}   # serial needs no Dask


def user_error(x):
    raise ConfigError(f"bad setting {x}", "x")


def test_a_failure_is_raised_again_where_a_caller_needs_it():
    res = run_pieces([Piece("bug", fail, (1,)), Piece("user", user_error, (2,)), Piece("after", add, (Result("bug"),))])
    with pytest.raises(ValueError, match="no good: 1") as info:
        res["bug"].reraise()
    assert any("in piece 'bug'" in note and "raise ValueError" in note for note in info.value.__notes__)
    with pytest.raises(ConfigError, match="bad setting 2"):        # a user error stays one clean line
        res["user"].reraise()
    with pytest.raises(ClusterError, match="piece 'after' failed: not run: bug failed"):
        res["after"].reraise()


def test_command_line_options_make_the_cluster_config(tmp_path, capsys):
    from openmm_cgnn.cli import _cluster_config, build_parser, main

    parser = build_parser()
    args = parser.parse_args(["compare", "--model", "m.pt", "--state-points", "300K:1bar", "--out", "o"])
    assert _cluster_config(args) == ClusterConfig()                     # default: a local cluster sized here
    args = parser.parse_args(["study", "transfer", "--out", "o", "--scheduler", "tcp://host:8786"])
    assert _cluster_config(args) == ClusterConfig(scheduler="tcp://host:8786")
    rc = main(["compare", "--model", str(tmp_path / "m.pt"), "--state-points", "300K:1bar", "--out",
               str(tmp_path / "o"), "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--workers" in err and "workers must be" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
