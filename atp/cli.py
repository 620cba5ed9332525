"""The command-line frame shared by every stage: `python -m atp.stages.<name> --config <job yaml> ...`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from atp import config as cfg
from atp.data.records import DataError
from atp.runtime import NonFiniteLoss, set_offline, setup_logging
from atp.tracking import TrackingError

log = logging.getLogger("atp")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="job config YAML (a pipeline config, or the part a job reads)")
    p.add_argument("--parent", default=None, help="JSON file with the pipeline's MLflow parent run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--rule", default=None, help="Snakemake rule name (an MLflow tag)")
    p.add_argument("--wildcards", default="", help="Snakemake wildcards (an MLflow tag)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    return p


def training_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every training stage takes (the `train` rule passes them all)."""
    p = parser(description)
    p.add_argument("--method", required=True, help="method name in the config's `methods`")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--init", default=None, help="model directory to start from (default: the base model)")
    p.add_argument("--checkpoint-dir", default=None, help="resumable checkpoints (default: next to --out-dir)")
    return p


def run(main: Callable[[argparse.Namespace, dict], None], p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse arguments, load and resolve the config, run `main`; known input errors exit 2 with one line."""
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    set_offline()
    try:
        config = cfg.load(args.config)
        main(args, config)
    except (cfg.ConfigError, DataError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    except NonFiniteLoss as exc:
        log.error("training diverged: %s", exc)
        sys.exit(3)
    except TrackingError as exc:
        log.error("%s", exc)
        sys.exit(4)
