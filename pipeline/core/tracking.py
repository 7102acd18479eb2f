"""MLflow tracking: one parent run per experiment, a child run per stage, lineage tags on each.

All calls go through MlflowClient with explicit run ids, so forked Luigi workers never share
an "active run". Training subprocesses attach to their child run through MLFLOW_RUN_ID (TRL's
report_to=["mlflow"] resumes that run). The default store is an embedded sqlite file,
runs/mlflow.db; MLFLOW_TRACKING_URI overrides it.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

if TYPE_CHECKING:  # mlflow is imported where it is used: a run with nothing to do never loads it
    from mlflow.tracking import MlflowClient

from pipeline.config import ExperimentConfig
from pipeline.core.io import lock, pid_alive

TAG = "dvr."  # prefix of this project's tags
MAX_PARAM = 6000


def tracking_uri(cfg: ExperimentConfig) -> str:
    uri = cfg.tracking.resolved_uri(cfg.output_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def server_error(cfg: ExperimentConfig, timeout: float = 10) -> str | None:
    """Why the MLflow tracking server of an http(s) tracking URI does not answer, or None (it answers,
    or the store is a local one)."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:  # it answers (an auth proxy, an older server without /health)
        return None
    except OSError as e:
        return f"the MLflow tracking server {uri} does not answer ({getattr(e, 'reason', None) or e})"
    return None


def check_server(cfg: ExperimentConfig) -> None:
    """Before any stage starts: an http(s) tracking URI must answer."""
    from pipeline.config import ConfigError

    why = server_error(cfg)
    if why:
        raise ConfigError(f"tracking.uri: {why}; start it (`mlflow server ...`) or fix the URI")


_READY: set[str] = set()


def client(cfg: ExperimentConfig) -> MlflowClient:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)  # which also sets MLFLOW_TRACKING_URI in os.environ: undone below, or the
    if before is None:  # next config of this process would resolve to this store (resolved_uri reads the env first)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    if uri.startswith("sqlite:///") and uri not in _READY:
        # MLflow creates and migrates a new sqlite store on first use; two Luigi workers doing that at
        # once fail ("duplicate column name"), so the first use is serialised with a file lock.
        db = Path(uri.removeprefix("sqlite:///"))
        with lock(str(db) + ".lock"):
            ensure_sqlite_store(db)
        _READY.add(uri)
    return MlflowClient(uri)


def ensure_sqlite_store(db: Path) -> None:
    """Make sure `db` is a complete MLflow store. A new store is created and migrated under a
    temporary name and renamed into place, so a kill mid-creation never leaves a half-made store
    (which fails every later run with "table ... already exists"). A half-made store left by an
    older version (no runs in it) is moved aside and made again; one with runs is never touched."""
    from mlflow.tracking import MlflowClient

    if db.is_file():
        try:
            MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
            return
        except Exception as e:  # noqa: BLE001 - sqlalchemy/alembic errors of a broken store
            if _run_count(db) > 0:
                raise RuntimeError(f"{db}: the MLflow store cannot be opened ({str(e).splitlines()[0][:200]}) and "
                                   f"holds runs, so it is left as it is; repair or move it") from None
            aside = db.with_name(f"{db.name}.broken-{int(time.time())}")
            _forget_engine(f"sqlite:///{db}")  # MLflow keeps one engine per URI, still open on the old file
            os.replace(db, aside)
            print(f"[tracking] {db}: a half-made MLflow store with no runs (killed while being created); "
                  f"moved to {aside.name} and made again", flush=True)
    for stale in db.parent.glob(f"{db.name}.tmp-*"):  # a killed creator's (its journal too)
        pid = stale.name.removeprefix(f"{db.name}.tmp-").removesuffix("-journal")
        if not pid_alive(pid):
            stale.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    MlflowClient(f"sqlite:///{tmp}").search_experiments(max_results=1)  # creates and migrates it
    _forget_engine(f"sqlite:///{tmp}")
    os.replace(tmp, db)


def _forget_engine(uri: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with SqlAlchemyStore._engine_map_lock:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()


def _run_count(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from runs").fetchone()[0]
    except sqlite3.Error:  # no runs table: nothing was ever logged
        return 0


def experiment_id(cfg: ExperimentConfig) -> str:
    import mlflow

    c = client(cfg)
    name = cfg.experiment_name
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_root(cfg, name))
    except mlflow.exceptions.MlflowException:  # created meanwhile by another worker
        return c.get_experiment_by_name(name).experiment_id


def _artifact_root(cfg: ExperimentConfig, name: str) -> str | None:
    if tracking_uri(cfg).startswith("sqlite:///"):
        return (Path(cfg.output_dir).resolve() / "mlartifacts" / name).as_uri()
    return None  # a tracking server decides


@contextmanager
def _lock(cfg: ExperimentConfig, name: str):
    """An exclusive file lock under output_dir: Luigi workers are processes, and search-then-create
    must be one step for them."""
    with lock(Path(cfg.output_dir) / f".{name}.lock"):
        yield


def parent_run(cfg: ExperimentConfig) -> str:
    """The experiment's parent run (created on first use, found again on every rerun)."""
    c, exp = client(cfg), experiment_id(cfg)
    with _lock(cfg, "mlflow-parent"):  # two workers must not both find none and create two
        found = c.search_runs([exp], f"tags.`{TAG}parent` = 'true' and tags.`{TAG}experiment` = '{cfg.name}'",
                              max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        return _create_parent(cfg, c, exp)


def _create_parent(cfg: ExperimentConfig, c: MlflowClient, exp: str) -> str:
    run = c.create_run(exp, run_name=cfg.name, tags={f"{TAG}parent": "true", f"{TAG}experiment": cfg.name,
                                                       f"{TAG}base_model": cfg.base_model,
                                                       f"{TAG}teacher_model": str(cfg.teacher_model)})
    log(cfg, run.info.run_id, params=flat_params(cfg.model_dump(mode="json")))
    return run.info.run_id


def start_stage(cfg: ExperimentConfig, stage: str, key: str, lineage: dict[str, Any] | None = None,
                run_name: str | None = None, nested: bool = True) -> str:
    """A fresh run for one execution of a stage, returns its id: a child of the experiment's parent
    run, or with `nested=False` a top-level run that names its parent in `dvr.parent_run_id` (the
    UI's chart view draws top-level runs only, so a model's evaluation is one line among the others)."""
    parent = parent_run(cfg)
    close_orphans(cfg)
    tags = {"mlflow.parentRunId" if nested else f"{TAG}parent_run_id": parent, f"{TAG}stage": stage, f"{TAG}hash": key, f"{TAG}experiment": cfg.name,
            f"{TAG}owner": process_token()}
    tags.update({f"{TAG}{k}": str(v) for k, v in (lineage or {}).items()})
    return client(cfg).create_run(experiment_id(cfg), run_name=f"{run_name or stage}-{key}", tags=tags).info.run_id


def log(
    cfg: ExperimentConfig,
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: Iterable[tuple[str, float, int]] | None = None,
    tags: dict[str, Any] | None = None,
    artifacts: Iterable[str | Path] = (),
    artifact_path: str | None = None,
) -> None:
    from mlflow.entities import Metric, Param, RunTag

    c = client(cfg)
    now = int(time.time() * 1000)  # the time of logging: MLflow's time axes and "Relative time"
    ps = [Param(k, str(v)[:MAX_PARAM]) for k, v in (params or {}).items()]
    ms = [Metric(k, float(v), now, int(s)) for k, v, s in (metrics or [])]
    ts = [RunTag(k if k.startswith(("mlflow.", TAG)) else TAG + k, str(v)) for k, v in (tags or {}).items()]
    if ps or ms or ts:  # MlflowClient splits a batch into the store's per-call limits itself
        c.log_batch(run_id, metrics=ms, params=ps, tags=ts)
    for a in artifacts:
        a = Path(a)
        (c.log_artifacts if a.is_dir() else c.log_artifact)(run_id, str(a), artifact_path)


def register_model(cfg: ExperimentConfig, run_id: str, name: str, path: str | None = None) -> str:
    """A new version of registered model `name` from this run: its `model` artifact, or the
    directory `path` by reference (a model too large to copy into the artifact store). Returns the version."""
    from mlflow.exceptions import MlflowException

    c = client(cfg)
    try:
        c.create_registered_model(name, tags={f"{TAG}experiment": cfg.name})
    except MlflowException:  # registered by an earlier run
        pass
    source = path or f"{c.get_run(run_id).info.artifact_uri}/model"
    tags = {f"{TAG}by_reference": str(path is not None).lower()}
    return str(c.create_model_version(name, source, run_id=run_id, tags=tags).version)


def log_dataset(cfg: ExperimentConfig, run_id: str, df: pd.DataFrame, name: str, source: str, context: str) -> None:
    """Record a table (problems, traces) as a dataset input of the run, with its digest and schema."""
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    client(cfg)
    with warnings.catch_warnings():  # MLflow's notes on source resolution and int schemas: noise here
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=source, name=name)
    # through the client with the run id: `mlflow.start_run(run_id=...)` would end (FINISH) the
    # stage's run when its block exits, mid-stage
    client(cfg).log_inputs(run_id, [DatasetInput(ds._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def end_stage(cfg: ExperimentConfig, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    c = client(cfg)
    if reason:
        c.set_tag(run_id, f"{TAG}end_reason", reason[:5000])
    c.set_terminated(run_id, status)


def process_token(pid: int | None = None) -> str:
    """host:pid:start-time of a process: a pid alone may be reused once its process is gone."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    try:  # field 22 of /proc/<pid>/stat, counted after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def _token_alive(token: str) -> bool:
    host, pid, start = (token.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's process: not ours to judge
    return pid_alive(pid) and (start == "?" or _start_time(int(pid)) == start)


def close_orphans(cfg: ExperimentConfig) -> list[str]:
    """Mark KILLED every RUNNING stage run of this experiment whose owning process (on this machine)
    is gone: a SIGKILL (or a power cut) gives a process no chance to end its own run. Returns their ids."""
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment_name)
    if exp is None:
        return []
    closed = []
    for run in c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        owner = run.data.tags.get(f"{TAG}owner")
        if owner and not _token_alive(owner):
            end_stage(cfg, run.info.run_id, "KILLED", f"its process ({owner}) ended without closing the run "
                                                        f"(killed); found by a later run")
            closed.append(run.info.run_id)
    return closed


def stage_env(cfg: ExperimentConfig, run_id: str) -> dict[str, str]:
    """Environment for a stage subprocess: TRL's MLflow callback resumes this child run."""
    env = dict(os.environ)
    env.update(MLFLOW_TRACKING_URI=tracking_uri(cfg), MLFLOW_RUN_ID=run_id,
               MLFLOW_EXPERIMENT_ID=experiment_id(cfg))
    return env


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v
    return out


def log_study(cfg: ExperimentConfig, sweep, reports: dict[str, Path], report_dir: Path) -> str:
    """A sweep in MLflow: its experiment holds one parent run per member; each gets the swept values
    as params (`sweep.<axis>`) and a `dvr.sweep` tag, so the runs table and the chart view compare
    the members directly. The study's tables go to one run of their own (tagged dvr.study_report)."""
    c, exp = client(cfg), experiment_id(cfg)
    for m in sweep.members:
        found = c.search_runs([exp], f"tags.`{TAG}parent` = 'true' and tags.`{TAG}experiment` = '{m.name}'",
                              max_results=1, order_by=["attributes.start_time ASC"])
        if found:
            run = found[0]
            new = {f"sweep.{a}": v for a, v in m.values.items() if f"sweep.{a}" not in run.data.params}
            log(cfg, run.info.run_id, params=new, tags={"sweep": sweep.study})
    with _lock(cfg, "mlflow-parent"):
        found = c.search_runs([exp], f"tags.`{TAG}study_report` = 'true'", max_results=1)
        run_id = found[0].info.run_id if found else c.create_run(
            exp, run_name=f"{sweep.study} (tables)", tags={f"{TAG}study_report": "true", f"{TAG}sweep": sweep.study}).info.run_id
    log(cfg, run_id, artifacts=[report_dir], artifact_path="study_report")
    end_stage(cfg, run_id)
    return run_id
