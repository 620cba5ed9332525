"""Create the MLflow store and the pipeline's parent run (the first rule of the DAG).

python -m atp.stages.tracking --config job.yaml --out results/<exp>/tracking/parent_run.json
"""

from __future__ import annotations

import logging

from atp import cli
from atp.tracking import start_parent

log = logging.getLogger("atp.tracking")


def main(args, config: dict) -> None:
    info = start_parent(config["mlflow"], config["experiment"], args.out)
    if "run_id" in info:
        log.info("MLflow store %s, parent run %s", info["tracking_uri"], info["run_id"])


if __name__ == "__main__":
    p = cli.parser("Create the MLflow parent run of a pipeline.")
    p.add_argument("--out", required=True)
    cli.run(main, p)
