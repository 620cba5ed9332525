"""Write a job config (given as JSON on the command line) to YAML.

Used by the workflow's `job_config` rule: Snakemake reruns that rule when the
JSON (a rule parameter) changes, and the new file's time stamp then reruns the
jobs that read it, and only those.
"""

from __future__ import annotations

import argparse
import json

from atp.config import dump


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    dump(json.loads(args.json), args.out)


if __name__ == "__main__":
    main()
