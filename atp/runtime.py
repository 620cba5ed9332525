"""Process-level helpers every stage uses: offline mode, seeds, devices, provenance, atomic files."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path


class NonFiniteLoss(RuntimeError):
    """The loss or gradient became NaN or inf; training stopped before the weights changed."""


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def set_offline(default: bool = True) -> None:
    """Set the hub's offline switches unless the caller already chose (a hub look-up otherwise hangs ~50 s here)."""
    if default:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("alembic", "mlflow.store.db.utils", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Dist:
    """Where this process runs: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: object

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def compute_init(threads: int | None = None) -> Dist:
    """(rank, world size, device) for CPU, one GPU, or N processes started by torchrun/accelerate."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def git_info(cwd: str | Path | None = None) -> dict[str, str]:
    """The commit and a dirty flag of the code's checkout (MLflow cannot find them for code started by Snakemake)."""
    cwd = cwd or Path(__file__).resolve().parents[1]

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown", "dirty": "unknown" if status is None else str(bool(status)).lower()}


def _module_file(package_root: Path, name: str) -> Path | None:
    base = package_root.parent.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _imported_names(source: str, package: tuple[str, ...]) -> frozenset[str]:
    """Every dotted name a module's source imports, anywhere in it (function-level imports included), relative
    imports resolved against `package`. Keyed by the source text, so the stages' digests parse a module they
    share once, and an edited file is parsed again."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(list(package[: len(package) - node.level + 1]) + ([module] if module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return frozenset(found)


def _atp_imports(package_root: Path, name: str, path: Path) -> set[str]:
    """The modules of the package that `name` (at `path`) imports, plus their parent packages (importing `a.b.c`
    runs `a/__init__` and `a/b/__init__` too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    root = package_root.name
    modules = set()
    for dotted in _imported_names(path.read_text(encoding="utf-8"), tuple(package)):
        parts = dotted.split(".")
        if parts[0] == root:
            modules |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_file(package_root, ".".join(parts[:i]))}
    return modules


def source_digest(module: str, package_root: str | Path | None = None) -> str:
    """A short hash of the source of `module` and of every module of its package that it imports, transitively.

    The workflow passes it to each job as a parameter, so that Snakemake reruns a stage when the code it runs
    changes (its `code` trigger sees only the rule's own command), and only the stages that import the changed
    file. Static imports only: a module loaded by name (importlib) is not followed."""
    package_root = Path(package_root) if package_root else Path(__file__).resolve().parent
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        path = _module_file(package_root, name)
        if path is None:
            continue
        seen[name] = path
        pending.extend(_atp_imports(package_root, name, path))
    if module not in seen:
        raise ValueError(f"no module {module!r} under {package_root}")
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(f"{name}\0".encode() + seen[name].read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def write_json(path: str | Path, payload: object) -> None:
    """Write JSON atomically with sorted keys, so equal content means equal bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def reproducible(metrics: dict) -> dict:
    """The metrics a rerun reproduces exactly (timings left out), floats rounded: what files under results/ hold."""
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items() if not k.endswith(("_per_s", "seconds"))}


def read_json(path: str | Path) -> object:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
