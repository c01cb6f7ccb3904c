"""edgecompress tune: the recipe's search space is checked, the search keeps its best result within the accuracy
limit (or says by how much it missed), stops on its budget, resumes, and shares a study between workers."""

from __future__ import annotations

import json
import os
import signal
import multiprocessing
import time

import pytest
import yaml

from edgecompress.errors import EdgeCompressError
from edgecompress.recipe import parse_recipe
import pg_server

STAGES = [{"method": "prune.structured", "ratio": 0.2}, {"method": "finetune", "epochs": 1},
          {"method": "quant.dynamic"}]
SEARCH = {"prune.structured": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.1}, "criterion": ["l1", "l2"]},
          "quant.dynamic": {"optional": True}}


def recipe_dict(search=None, stages=None) -> dict:
    return {"name": "tiny", "model": {"zoo": "mnist_cnn", "pretrain": {"epochs": 3, "lr": 0.05, "batch_size": 32}},
            "data": {"dataset": "digits"}, "stages": stages or STAGES, "export": {"warmup": 1, "repeats": 3},
            "search": SEARCH if search is None else search}


def invalid(search, stages=None) -> str:
    with pytest.raises(EdgeCompressError) as err:
        parse_recipe(recipe_dict(search, stages))
    return str(err.value)


def test_search_space_errors_name_the_key_and_the_fix():
    assert "an empty search space" in invalid({})
    assert "low (0.8) must be below high (0.2)" in invalid({"prune.structured": {"ratio": {"low": 0.8, "high": 0.2}}})
    assert "did you mean 'prune.structured'?" in invalid({"prune.structural": {"ratio": [0.3, 0.5]}})
    assert "has no field 'ratoi'; did you mean 'ratio'?" in invalid({"prune.structured": {"ratoi": [0.3, 0.5]}})
    msg = invalid({"prune.structured": {"ratio": {"low": 0.5, "high": 1.5}}})
    assert "search.prune.structured.ratio.high: 1.5 is not a valid prune.structured ratio" in msg
    assert "unknown key 'hgh'; did you mean 'high'?" in invalid({"finetune": {"epochs": {"low": 1, "hgh": 3}}})
    assert "a range needs a number field" in invalid({"prune.structured": {"criterion": {"low": 1, "high": 2}}})
    assert "Input should be" in invalid({"prune.structured": {"criterion": ["l1", "l3"]}})
    assert "at least 2 items" in invalid({"prune.structured": {"ratio": [0.5]}})
    assert "repeated choices" in invalid({"prune.structured": {"ratio": [0.5, 0.5]}})
    assert "nothing to search" in invalid({"finetune": {}})
    assert "log: true needs low > 0" in invalid({"finetune": {"lr": {"low": 0, "high": 0.1, "log": True}}})
    twice = [*STAGES[:2], {"method": "finetune", "epochs": 1}]
    assert "2 stages are named 'finetune'" in invalid({"finetune": {"epochs": [1, 2]}}, twice)
    # a valid space survives the round trip through the resolved recipe
    recipe = parse_recipe(recipe_dict())
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())).fingerprint() == recipe.fingerprint()


def test_suggest_and_apply_set_fields_and_leave_out_optional_stages():
    import optuna

    from edgecompress.search import space

    recipe = parse_recipe(recipe_dict({**SEARCH, "finetune": {"epochs": {"low": 1, "high": 4}}}))
    trial = optuna.trial.FixedTrial({"prune.structured.ratio": 0.7, "prune.structured.criterion": "l1",
                                     "quant.dynamic.run": False, "finetune.epochs": 3})
    chosen = space.suggest(trial, recipe.search, recipe.stages)
    stages = space.apply(recipe.stages, chosen)
    assert [s.method for s in stages] == ["prune.structured", "finetune"]
    assert (stages[0].config.ratio, stages[0].config.criterion, stages[1].config.epochs) == (0.7, "l1", 3)
    assert isinstance(stages[1].config.epochs, int) and recipe.stages[0].config.ratio == 0.2  # the recipe is unchanged
    assert space.recipe_values(recipe.search, recipe.stages) == {  # the first candidate: the recipe as written
        "prune.structured.ratio": 0.2, "prune.structured.criterion": "l2", "quant.dynamic.run": True,
        "finetune.epochs": 1}


def test_unreachable_storage_is_a_clear_error_and_writes_nothing(tmp_path):
    from edgecompress.search.tune import TuneSettings, tune

    if pg_server.missing():
        pytest.skip(pg_server.missing())
    url = f"postgresql://postgres:secret@127.0.0.1:{pg_server.free_port()}/postgres"
    with pytest.raises(EdgeCompressError) as err:
        tune(parse_recipe(recipe_dict()), tmp_path / "t", TuneSettings(max_drop=1, storage=url))
    assert "cannot open the study storage postgresql+psycopg2://postgres:***@127.0.0.1" in str(err.value)
    assert "Connection refused" in str(err.value)
    assert "secret" not in str(err.value) and not (tmp_path / "t").exists()


def _tune(out, **settings) -> dict:
    from edgecompress.search.tune import TuneSettings, tune

    return tune(parse_recipe(recipe_dict()), out, TuneSettings(seed=0, **settings))


@pytest.mark.slow
def test_tune_keeps_the_best_within_the_limit_and_resumes(tmp_path):
    doc = _tune(tmp_path, max_drop=4.0, trials=3)  # the first trial is the recipe's own 20% pruning
    assert doc["trials"] == {"complete": 3} and doc["limit_met"]
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    feasible = [r for r in pareto if r["val_drop_points"] <= 4.0]
    best = doc["best"]
    assert best["val_drop_points"] <= 4.0 and best["size_bytes"] == min(r["size_bytes"] for r in feasible)
    assert (tmp_path / "best").resolve() == (tmp_path / best["run_dir"] / "artifacts").resolve()
    assert any(p.suffix == ".onnx" for p in (tmp_path / "best").iterdir())
    run = json.loads((tmp_path / best["run_dir"] / "metrics.json").read_text())
    history = run["history"]
    assert best["size_bytes"] == history[-1]["metrics"]["size_bytes"] < history[0]["metrics"]["size_bytes"]
    assert best["test_drop_points"] == run["summary"]["accuracy_drop_points"]  # the test split: reported only
    assert _tune(tmp_path, max_drop=4.0, trials=4)["trials"] == {"complete": 4}  # resumed: one more trial
    with pytest.raises(EdgeCompressError, match="was made for another search"):
        _tune(tmp_path, max_drop=1.0, trials=5)


@pytest.mark.slow
def test_unmet_limit_and_spent_budget_still_leave_the_best_on_disk(tmp_path):
    from typer.testing import CliRunner

    from edgecompress.cli import app

    path = tmp_path / "r.yaml"  # 80-90% of the channels gone and no fine-tuning: far beyond a 0.5-point limit
    path.write_text(yaml.safe_dump(recipe_dict({"prune.structured": {"ratio": [0.8, 0.9]}}, [STAGES[0]])))
    res = CliRunner().invoke(app, ["tune", str(path), "--max-drop", "0.5", "--trials", "50", "--time-budget", "0.5",
                                   "--out", str(tmp_path / "t")], terminal_width=200)
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert doc["trials"] == {"complete": 1} and not doc["limit_met"]  # the budget ends the search after one trial
    assert doc["missed_by_points"] == round(doc["best"]["val_drop_points"] - 0.5, 3) > 0
    assert f"{doc['missed_by_points']:.2f} over the limit" in res.output and "was NOT met" in res.output
    assert (tmp_path / "t" / "best").is_dir()


def test_tune_help_does_not_import_torch():
    from test_startup import _heavy_modules_after

    assert _heavy_modules_after("tune", "--help") == []


QUICK = [STAGES[0], STAGES[2]]  # the workers' trials: no fine-tuning


def _work(out, storage, trials, heartbeat) -> None:
    from edgecompress.search.tune import TuneSettings, tune

    tune(parse_recipe(recipe_dict(stages=QUICK)), out, TuneSettings(max_drop=3, trials=trials, storage=storage,
                                                                     heartbeat_s=heartbeat))


def _worker(out, storage, trials, heartbeat=10):
    """A worker process (forked: torch and the cached baseline are loaded already)."""
    process = multiprocessing.get_context("fork").Process(target=_work, args=(out, storage, trials, heartbeat))
    process.start()
    return process


def _trials(storage):
    import optuna

    return optuna.load_study(study_name="tiny", storage=storage).trials


def _running(storage) -> list:
    """The running trials of the study (none while it does not exist yet)."""
    try:
        return [t for t in _trials(storage) if t.state.name == "RUNNING"]
    except KeyError:  # no such study yet
        return []


def _shared_study_runs_each_trial_once(tmp_path, storage):
    from edgecompress.search.tune import TuneSettings, tune

    settings = TuneSettings(max_drop=3, trials=0, storage=storage)  # create the study before the workers attach
    assert tune(parse_recipe(recipe_dict(stages=QUICK)), tmp_path / "tune", settings)["best"] is None
    workers = [_worker(tmp_path / "tune", storage, 4) for _ in range(2)]
    for w in workers:
        w.join(300)
    assert [w.exitcode for w in workers] == [0, 0]
    trials = _trials(storage)
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert 4 <= len(done) <= 5 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    run_dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == len(run_dirs) == len({t.number for t in done})
    assert all((tmp_path / "tune" / d / "artifacts").is_dir() for d in run_dirs)


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study_without_duplicates(tmp_path):
    _shared_study_runs_each_trial_once(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


def _open(url: str) -> str:
    from edgecompress.search.study import open_storage

    return type(open_storage(url, 10)).__name__


@pytest.mark.slow
@pytest.mark.skipif(pg_server.missing() is not None, reason=str(pg_server.missing()))
def test_two_workers_share_a_postgresql_study_without_duplicates(tmp_path):
    with pg_server.server() as url:
        with multiprocessing.get_context("fork").Pool(4) as pool:  # 4 processes create the tables at once
            assert pool.map(_open, [url] * 4) == ["RDBStorage"] * 4  # (measured without the retry: 3 of 4 fail)
        _shared_study_runs_each_trial_once(tmp_path, url)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_workers_trial_fails_and_is_retried(tmp_path):
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    _work(tmp_path / "tune", storage, 0, 1)  # the study and the cached baseline
    victim = _worker(tmp_path / "tune", storage, 3, heartbeat=1)
    deadline = time.time() + 120
    while time.time() < deadline and victim.is_alive() and not _running(storage):
        time.sleep(0.1)
    assert victim.is_alive()
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    killed = [t.number for t in _running(storage)]
    assert len(killed) == 1
    time.sleep(3.5)  # past the grace period of 3 heartbeats
    survivor = _worker(tmp_path / "tune", storage, 3, heartbeat=1)
    survivor.join(300)
    assert survivor.exitcode == 0
    trials = _trials(storage)
    assert trials[killed[0]].state.name == "FAIL"
    retried = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed[0]]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE" and retried[0].params == trials[killed[0]].params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    assert json.loads((tmp_path / "tune" / "tune.json").read_text())["best"] is not None
