"""MLflow tracking: one parent run per pipeline, one child run per job.

Nested runs do not work across processes, so every job's run carries the tag
`mlflow.parentRunId` of the parent run written by the first rule. The parent spans
the pipeline: it stays RUNNING while jobs run, and the workflow's onsuccess/onerror
handlers end it (`end_parent`), FINISHED with the table's summary metrics and the
table itself, or FAILED. Only rank 0
talks to MLflow; other ranks get the same object with tracking switched off, so
call sites stay unconditional. Metrics are always written under `results/` by
the stage itself; MLflow is a view on them.

Every MLflow call is retried with backoff (a shared SQLite store is briefly locked
when jobs log at once). When the retries run out, the job fails with a
TrackingError naming the store, unless `mlflow.required` is false: then tracking
switches itself off with a warning and the job goes on.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

from atp.config import config_hash, flatten
from atp.runtime import git_info, read_json, write_json

log = logging.getLogger(__name__)
MAX_PARAM_LENGTH = 6000


def tracking_uri(setting: str) -> str:
    """A path becomes `sqlite:///<absolute path>`; anything with a scheme is used as it is."""
    if "://" in setting:
        return setting
    path = Path(setting).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts next to a SQLite store (not in ./mlruns of whatever directory a job runs in)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").resolve().as_uri()
    return None


class TrackingError(RuntimeError):
    """MLflow stayed unreachable (or locked) through every retry."""


ATTEMPTS = 6  # 0.5 + 1 + 2 + 4 + 8 = 15.5 s of waiting in all
# One retry loop, ours: MLflow's own HTTP client would otherwise retry each request 7 times for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _retry(action, what: str, where: str = "", attempts: int = ATTEMPTS):
    """Retry an MLflow call with backoff: a shared SQLite store is briefly locked when jobs log at once."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except TrackingError:  # final already (mlflow not installed): no retry would help
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow raises many exception types for a locked store
            if attempt == attempts:
                raise TrackingError(
                    f"MLflow {what} failed after {attempts} attempts{f' against {where}' if where else ''}: {str(exc)[:500]}. "
                    "Check mlflow.tracking_uri, or set mlflow.required: false to run without tracking"
                ) from exc
            log.warning("MLflow %s failed (%s); retrying in %.1fs", what, str(exc)[:200], delay)
            time.sleep(delay)
            delay *= 2


EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def _experiment_id(mlflow, name: str, uri: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        # A model-training experiment: MLflow 3's UI then opens it on its runs table, not on the GenAI overview.
        return mlflow.create_experiment(name, artifact_location=_artifact_root(uri), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # another job created it meanwhile
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _import_mlflow():
    """The mlflow package, or a TrackingError where it is not installed (a stock GPU image without it runs the
    pipeline with mlflow.required: false, as scripts/device_check.sh does)."""
    try:
        import mlflow
    except ImportError as exc:
        raise TrackingError(
            f"the mlflow package cannot be imported ({exc}); install it, or set mlflow.required: false to run without tracking"
        ) from exc
    return mlflow


def _open_experiment(mlflow_cfg: dict) -> tuple[str, str]:
    """(tracking URI, experiment id) from the `mlflow` config section, creating the store and experiment if needed."""
    mlflow = _import_mlflow()
    uri = tracking_uri(mlflow_cfg["tracking_uri"])
    mlflow.set_tracking_uri(uri)
    return uri, _retry(lambda: _experiment_id(mlflow, mlflow_cfg["experiment_name"], uri), "create experiment", uri)


def start_parent(mlflow_cfg: dict, experiment: str, out: str | Path) -> dict:
    """Create the store, the MLflow experiment and the pipeline's parent run; write its ids to `out`.

    Every job reads the store and the `required` switch from `out`. If the store cannot be reached
    and tracking is not required (or mlflow is not installed), `out` says so and every job runs without MLflow.
    """
    required = mlflow_cfg.get("required", True)
    try:
        uri, experiment_id = _open_experiment(mlflow_cfg)
        import mlflow

        git = git_info()
        tags = {"pipeline": experiment, "stage": "pipeline", "git_commit": git["commit"], "git_dirty": git["dirty"]}
        # Left RUNNING: the workflow's onsuccess/onerror end it (end_parent) once the last job is done.
        run = _retry(
            lambda: mlflow.MlflowClient().create_run(experiment_id, run_name=f"pipeline-{experiment}", tags=tags),
            "create parent run",
            uri,
        )
    except TrackingError as exc:
        if required:
            raise
        log.warning("tracking is off for this pipeline (mlflow.required is false): %s", exc)
        info = {"disabled": str(exc), "required": False, "tracking_uri": mlflow_cfg["tracking_uri"]}
        write_json(out, info)
        return info
    info = {"run_id": run.info.run_id, "experiment_id": experiment_id, "tracking_uri": uri, "required": required}
    write_json(out, info)
    return info


def _parent_client(parent_file: str | Path):
    """(client, parent info) of a pipeline's parent run, or None when there is none (not created yet, or tracking off)."""
    if not Path(parent_file).exists():
        return None
    parent = read_json(parent_file)
    if parent.get("disabled"):
        return None
    import mlflow

    return mlflow.MlflowClient(tracking_uri=parent["tracking_uri"]), parent


def reopen_parent(parent_file: str | Path) -> dict | None:
    """Mark an existing parent run RUNNING again while a later invocation updates the pipeline's results.

    The parent stands for results/<experiment>/ (its parent_run.json is an input of every job), so a rerun
    of part of the DAG adds its child runs to the same parent rather than to a new one. Returns the run id
    and the status it had, for `end_parent` (None: no parent yet, or tracking off)."""
    found = _parent_client(parent_file)
    if found is None:
        return None
    client, parent = found
    try:
        status = _retry(lambda: client.get_run(parent["run_id"]).info.status, "read parent run", parent["tracking_uri"])
        _retry(lambda: client.update_run(parent["run_id"], status="RUNNING"), "reopen parent run", parent["tracking_uri"])
    except TrackingError as exc:
        log.warning("%s; the parent run's status is not updated", exc)
        return None
    return {"run_id": parent["run_id"], "status": status}


def end_parent(
    parent_file: str | Path,
    status: str,
    table_csv: str | Path | None = None,
    table_md: str | Path | None = None,
    config: dict | None = None,
    reopened: dict | None = None,
) -> str | None:
    """End the pipeline's parent run with `status` (FINISHED or FAILED, from Snakemake's onsuccess/onerror).

    On success the parent also gets the table's summary metrics (`table/<method>/avg_acc` and `avg_tokens`,
    as the table job logs them) and the table and resolved pipeline config as artifacts, so that MLflow's
    runs table compares pipelines at a glance. A parent reopened at the start of this invocation but
    replaced meanwhile (the tracking rule reran) gets its old status back. A store that cannot be reached
    here only warns: every job has finished (or failed) already and results/ holds everything.
    Returns the ended run's id (None: no parent, or tracking off)."""
    found = _parent_client(parent_file)
    if found is None:
        return None
    client, parent = found
    run_id, where = parent["run_id"], parent["tracking_uri"]
    try:
        if reopened and reopened["run_id"] != run_id:
            _retry(lambda: client.update_run(reopened["run_id"], status=reopened["status"]), "restore replaced parent run", where)
        if status == "FINISHED" and table_csv is not None and Path(table_csv).exists():
            from mlflow.entities import Metric

            with open(table_csv, encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle))
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in summary_metrics(rows).items()]
            _retry(lambda: client.log_batch(run_id, metrics=metrics), "log parent metrics", where)
            for path in (table_md, table_csv):
                if path is not None and Path(path).exists():
                    _retry(lambda path=path: client.log_artifact(run_id, str(path)), "log parent artifact", where)
            if config is not None:
                _retry(lambda: client.log_dict(run_id, config, "config.yaml"), "log parent config", where)
        _retry(lambda: client.set_terminated(run_id, status=status), "end parent run", where)
    except TrackingError as exc:
        log.warning("%s; the parent run is not ended", exc)
        return None
    return run_id


def data_tags(card_path: Path) -> dict[str, str]:
    """The digests of the prepared data (from the data card, once data prep has written it):
    one per split and one over all splits, so a run says exactly which data it saw."""
    if not card_path.exists():
        return {}
    import hashlib

    splits = read_json(card_path)["splits"]
    tags = {f"data_digest.{c['split']}": c["sha256"][:16] for c in splits}
    tags["data_digest"] = hashlib.sha256("".join(c["sha256"] for c in splits).encode()).hexdigest()[:16]
    return tags


class Tracker:
    """A child run of the pipeline's parent run (or a no-op on non-zero ranks)."""

    def __init__(
        self,
        job_config: dict,
        stage: str,
        parent: str | Path | None,
        run_name: str,
        tags: dict[str, Any] | None = None,
        enabled: bool = True,
    ):
        self.enabled = enabled
        self.required, self.where = True, ""
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self._job_config = job_config
        self._stage = stage
        self._parent = parent
        self._run_name = run_name
        self._tags = {k: str(v) for k, v in (tags or {}).items()}

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        if self._parent is not None and Path(self._parent).exists():
            parent = read_json(self._parent)
            if parent.get("disabled"):
                log.warning(
                    "MLflow tracking is off for this pipeline (%s); results are only under results/", parent["disabled"][:200]
                )
                self.enabled = False
                return self
            self.required = parent.get("required", True)
            self.where = uri = parent["tracking_uri"]
            experiment_id, parent_id = parent["experiment_id"], parent["run_id"]
        else:
            mlflow_cfg = self._job_config["mlflow"]
            self.required, self.where = mlflow_cfg.get("required", True), mlflow_cfg["tracking_uri"]
            found = self.call(lambda: _open_experiment(mlflow_cfg), "open experiment")
            if not self.enabled:
                return self
            uri, experiment_id = found
            parent_id = None
        import mlflow  # importable: the parent run or _open_experiment above needed it

        self.client = mlflow.MlflowClient(tracking_uri=uri)
        git = git_info()
        tags = {
            "stage": self._stage,
            "config_hash": config_hash(self._job_config),
            "git_commit": git["commit"],
            "git_dirty": git["dirty"],
            "pipeline": self._job_config.get("experiment", ""),
            **self._tags,
        }
        self.parent_id = parent_id
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
            tags.update(data_tags(Path(self._parent).resolve().parents[1] / "data" / "card.json"))
        run = self.call(lambda: self.client.create_run(experiment_id, run_name=self._run_name, tags=tags), "create run")
        if not self.enabled:
            return self
        self.run_id = run.info.run_id
        params = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten(self._job_config).items()}
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self.call(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk), "log params")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.enabled and self.run_id is not None:
            status = "FINISHED" if exc_type is None else "FAILED"
            self.call(lambda: self.client.set_terminated(self.run_id, status=status), "end run")

    def call(self, action, what: str):
        """Run one MLflow call with retries. If they all fail: raise, or (tracking not required) warn,
        switch tracking off for the rest of the job and return None."""
        if not self.enabled:
            return None
        try:
            return _retry(action, what, self.where)
        except TrackingError as exc:
            if self.required:
                raise
            log.warning("%s; going on without MLflow (mlflow.required is false)", exc)
            self.enabled = False
            return None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        self.call(lambda: self.client.log_batch(self.run_id, metrics=items), "log metrics")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path), "log artifact")

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.call(lambda: self.client.log_artifacts(self.run_id, str(folder), artifact_path), "log artifacts")

    def set_parent_tags(self, tags: dict[str, Any]) -> None:
        """Tag the pipeline's parent run (data prep adds the data digests, unknown when it was created)."""
        if self.enabled and self.parent_id:
            for key, value in tags.items():
                self.call(lambda key=key, value=value: self.client.set_tag(self.parent_id, key, str(value)), "set parent tag")

    def log_input(self, name: str, digest: str, path: str, n: int) -> None:
        """Record a dataset (name, digest, source path) as an MLflow dataset input."""
        if not self.enabled:
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name=name, digest=digest[:36], source_type="local", source=str(path), schema=None, profile=f'{{"num_rows": {n}}}'
        )
        entry = DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value=name)])
        self.call(lambda: self.client.log_inputs(self.run_id, datasets=[entry]), "log input")


def summary_metrics(rows) -> dict[str, float]:
    """Each row's four-suite average accuracy and tokens, as MLflow metrics: the table job's run and the
    pipeline's parent run (end_parent, which reads them back from table.csv) carry the same."""
    metrics = {}
    for row in rows:
        metrics[f"table/{row['method']}/avg_acc"] = float(row["avg_acc"])
        metrics[f"table/{row['method']}/avg_tokens"] = float(row["avg_tokens"])
    return metrics
