"""Two steps of scripts/device_check.sh that need Python: what the machine has, and bf16 RL with a trained-size sigma.

    python scripts/device_check.py env --out env.json
    python scripts/device_check.py bf16-rl --out bf16_rl.json [--device cuda]

`env`: Python, torch (and its CUDA), the device and whether it does bf16, and the version of every package the
pipeline imports (null where one is missing).

`bf16-rl`: a small ATP-Latent policy whose latent head has a trained head's sigma (logvar near -8, sigma 0.018), one
GRPO step through atp.rl.grpo_step under bf16 autocast on the device, 16 rollouts replayed in minibatches of 4: the
first minibatch's log-ratio must be 0 up to fp32 rounding and nothing clipped (the latent head, its Gaussian
log-density and the log-ratio run in fp32 under autocast). Exit status 1 when it is not.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

# The distributions the pipeline imports (pyproject.toml's dependencies).
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "datasets",
    "peft",
    "accelerate",
    "mlflow",
    "snakemake",
    "pandas",
    "pyyaml",
    "jsonschema",
    "tqdm",
    "matplotlib",
)
MAX_LOG_RATIO = 1e-4  # fp32 rounding of a log-density summed over the latent's dimensions


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: version(name) for name in PACKAGES},
        "cuda_available": cuda,
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "device_count": torch.cuda.device_count() if cuda else 0,
        "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "cpu_count": os.cpu_count(),
    }


def bf16_rl(device_name: str) -> dict:
    """One bf16 GRPO step of a policy with a trained-size sigma; its first log-ratio and clip fraction."""
    import torch

    from atp import config, modeling
    from atp.latent import LatentConfig, LatentReasoner
    from atp.rl import bf16_first_step
    from atp.runtime import seed_everything
    from atp.stages.prepare_data import build_splits, make_tokenizer

    device = torch.device(device_name)
    cfg = config.resolve(
        {
            "data": {"synthetic": {"n": 20}, "train": {"source": "synthetic", "n": 64}, "val": {"source": "synthetic", "n": 8}},
            "model": {"vocab_size": 200, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128},
        }
    )
    splits, _, _ = build_splits(cfg)
    tok = make_tokenizer(cfg, splits["train"])
    seed_everything(0)
    decoder = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    model = LatentReasoner(
        modeling.build_model(cfg["model"], tok), LatentConfig(variant="atp", c=2, max_steps=3, decoder=decoder), tok
    )
    metrics = bf16_first_step(model, tok, [r["question"] for r in splits["train"]], device)
    out = {
        "device": str(device),
        "first_clip_fraction": metrics["rl/first_clip_fraction"],
        "first_max_abs_log_ratio": metrics["rl/first_max_abs_log_ratio"],
        "max_allowed_log_ratio": MAX_LOG_RATIO,
        "loss_finite": bool(torch.isfinite(torch.tensor(metrics["rl/loss"]))),
    }
    out["ok"] = out["first_clip_fraction"] == 0.0 and out["first_max_abs_log_ratio"] < MAX_LOG_RATIO and out["loss_finite"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["env", "bf16-rl"])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--device", default=None, help="bf16-rl: cuda or cpu (default: cuda if available)")
    args = p.parse_args(argv)
    if args.step == "env":
        result = environment()
    else:
        import torch

        result = bf16_rl(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
