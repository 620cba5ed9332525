"""Saving and loading a latent reasoner: safetensors and JSON only."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from atp.config import LatentConfig
from atp.latent.reasoner import LatentReasoner


def save_latent(model: LatentReasoner, tokenizer, out_dir: str | Path, meta: dict) -> None:
    """Backbone as a plain HF model (LoRA merged), decoder as its own HF model, heads as safetensors."""
    from safetensors.torch import save_file

    from atp.modeling import save_model

    out_dir = Path(out_dir)
    save_model(model.backbone, tokenizer, out_dir, meta)
    heads = {
        k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if not k.startswith(("backbone.", "decoder."))
    }
    if heads:
        save_file(heads, out_dir / "latent_heads.safetensors")
    if model.cfg.spec.decoder:
        model.decoder.save_pretrained(out_dir / "decoder", safe_serialization=True)
    (out_dir / "latent.json").write_text(json.dumps(asdict(model.cfg), indent=2, sort_keys=True), encoding="utf-8")


def is_latent(path: str | Path) -> bool:
    return (Path(path) / "latent.json").exists()


def load_latent(path: str | Path) -> tuple[LatentReasoner, object]:
    """(LatentReasoner, tokenizer) saved by `save_latent`."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from atp.modeling import load_model

    path = Path(path)
    backbone, tokenizer = load_model(path)
    cfg = LatentConfig(**json.loads((path / "latent.json").read_text(encoding="utf-8")))
    decoder = AutoModelForCausalLM.from_pretrained(str(path / "decoder"), dtype="float32") if cfg.spec.decoder else None
    model = LatentReasoner(backbone, cfg, tokenizer, decoder)
    heads = path / "latent_heads.safetensors"
    if heads.exists():
        missing, unexpected = model.load_state_dict(load_file(heads), strict=False)
        wrong = [k for k in missing if not k.startswith(("backbone.", "decoder."))] + list(unexpected)
        if wrong:
            raise ValueError(f"{heads}: parameters do not match the variant {cfg.variant!r}: {wrong[:5]}")
    model.eval()
    return model, tokenizer
