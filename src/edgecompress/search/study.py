"""The Optuna study behind ``edgecompress tune`` and what is kept of it on disk.

Storage: a SQLite file in the tune directory by default, or any SQLAlchemy URL (``postgresql://...``) that
workers on several machines share. Workers send heartbeats; a trial whose worker stops beating (killed, machine
lost) is marked failed by the next worker that starts a trial, and Optuna's ``RetryHeartbeatStaleTrialCallback``
queues its parameters again as a new trial, so no candidate is lost and none runs twice at once. A study remembers the
recipe, limit and objective it was made for, and refuses workers (or resumed runs) that bring others.

After every trial the worker rewrites, under a file lock and atomically, ``pareto.json`` (the trials no other
trial beats on both cost and accuracy drop on the validation split), ``tune.json`` (the best trial, counts,
whether the limit was met) and the ``best`` link (to the best trial's ``artifacts/`` folder), so a stopped or
killed search leaves its best result on disk. The non-dominated filter is a few lines here: Optuna's own ``best_trials`` keeps only the
feasible trials of a constrained study, and the front must also show the trials beyond the limit.
"""

from __future__ import annotations

import fcntl
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from edgecompress import rundir
from edgecompress.errors import EdgeCompressError

TABLE_RACE_RETRIES = 5  # workers creating the tables of an empty database at once: the losers try again
STORAGE_FIX = ("check that the database server runs and accepts connections from this machine, and the URL: "
               "postgresql://USER:PASSWORD@HOST:PORT/DATABASE or sqlite:///FILE.db")


def shown_url(url: str) -> str:
    """``url`` with its password hidden."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _with_driver(url: str) -> str:
    """``postgresql://`` URLs through psycopg2 (the ``distributed`` extra; SQLAlchemy 2.1 would pick psycopg 3)."""
    return "postgresql+psycopg2://" + url.removeprefix("postgresql://") if url.startswith("postgresql://") else url


def open_storage(url: str, heartbeat_s: float) -> RDBStorage:
    """The study storage at ``url``; a clear error when it cannot be reached (nothing is written then)."""
    from sqlalchemy import exc

    url = _with_driver(url)
    connect = {"connect_timeout": 10} if url.startswith("postgresql") else {"timeout": 60}  # 60 s: SQLite locks
    for attempt in range(TABLE_RACE_RETRIES + 1):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs={"connect_args": connect, "pool_pre_ping": True},
                                  heartbeat_interval=max(1, round(heartbeat_s)),
                                  grace_period=max(3, round(3 * heartbeat_s)),
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except (exc.IntegrityError, exc.ProgrammingError):  # another worker is creating the same tables
            if attempt == TABLE_RACE_RETRIES:
                raise
            time.sleep(0.5 * (attempt + 1))
        except (exc.SQLAlchemyError, ImportError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            fix = "pip install psycopg2-binary" if isinstance(err, ImportError) else STORAGE_FIX
            raise EdgeCompressError(f"cannot open the study storage {shown_url(url)}: {reason}", where="--storage",
                                    fix=fix) from None
    raise AssertionError("unreachable")


def open_study(storage: RDBStorage, name: str, identity: dict[str, Any], sampler: optuna.samplers.BaseSampler,
               first: dict[str, Any]) -> optuna.Study:
    """The study ``name``: objectives (cost, accuracy drop), both minimized. A new study queues ``first`` (the
    recipe's own settings) as its first candidate, so the search starts from what the recipe would do."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, load_if_exists=True,
                                directions=["minimize", "minimize"])
    made_for = study.user_attrs.get("edgecompress")
    if made_for is None:
        study.set_user_attr("edgecompress", identity)
        study.enqueue_trial(first, skip_if_exists=True)
    elif made_for != identity:
        differ = ", ".join(f"{k}: {made_for.get(k)!r} there, {v!r} here" for k, v in identity.items()
                           if made_for.get(k) != v)
        raise EdgeCompressError(f"study {name!r} was made for another search ({differ})", where="--study",
                                fix="pass another --study name, or the recipe, --max-drop and --objective it was "
                                    "made with")
    return study


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state (lower-case state names)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def _dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
    return all(x <= y for x, y in zip(a.values, b.values)) and a.values != b.values


def pareto(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials no other trial beats on every objective, by cost."""
    return sorted((t for t in trials if not any(_dominates(o, t) for o in trials)), key=lambda t: t.values)


def best(trials: list[FrozenTrial], max_drop: float) -> FrozenTrial | None:
    """The cheapest trial within the drop limit; when none is, the one with the smallest drop."""
    feasible = [t for t in trials if t.values[1] <= max_drop]
    if feasible:
        return min(feasible, key=lambda t: (t.values[0], t.values[1], t.number))
    return min(trials, key=lambda t: (t.values[1], t.values[0], t.number), default=None)


def row(t: FrozenTrial, metric: str) -> dict[str, Any]:
    """One trial as the JSON files show it."""
    return {"trial": t.number, "params": t.params, metric: t.values[0], "val_drop_points": t.values[1],
            **{k: t.user_attrs[k] for k in ("test_drop_points", "run_dir", "worker", "seconds", "metrics")
               if k in t.user_attrs}}


def keep(out: Path, study: optuna.Study, doc: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the tune directory's view of the study (``pareto.json``, ``tune.json``, ``best``); returns tune.json."""
    metric, max_drop = doc["metric"], doc["max_drop"]
    with open(out / ".tune.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several workers on one machine share the folder
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        chosen = best(done, max_drop)
        doc = {**doc, "trials": counts(study), "best": None if chosen is None else row(chosen, metric)}
        if chosen is not None:
            drop = chosen.values[1]
            doc.update(limit_met=drop <= max_drop, missed_by_points=round(max(0.0, drop - max_drop), 3))
            doc["best_artifact"] = _link_best(out, chosen)
        rundir.write_json(out / "pareto.json", [row(t, metric) for t in pareto(done)])
        rundir.write_json(out / "tune.json", doc)
    return doc


def _link_best(out: Path, trial: FrozenTrial) -> str | None:
    """Point ``out/best`` at the trial's artifacts (atomically: a new link renamed over the old one); None when
    the trial ran elsewhere (another machine's folder)."""
    artifacts = Path(trial.user_attrs.get("run_dir", "-")) / "artifacts"
    if not (out / artifacts).is_dir():
        return None
    tmp = out / f".best-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(artifacts, target_is_directory=True)
    os.replace(tmp, out / "best")
    return str(artifacts)
