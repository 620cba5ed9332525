"""Tokenizer and backbone: built from scratch for the miniature, or a pretrained causal LM.

The built tokenizer is a small BPE over the training text with each digit its own
token and spaces kept as `▁` (Metaspace), so decoding round-trips exactly. A
pretrained tokenizer gets the pipeline's special tokens added, and their new
embeddings start from the embedding of `"<<"` (docs/method.md, section 3).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from atp.text import BOT, EOS, EOT, LATENT, PAD, SPECIAL_TOKENS, UNK

log = logging.getLogger(__name__)
INIT_FROM = "<<"


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a BPE tokenizer on `texts`; digits and punctuation are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
            # Each digit its own token, the same in the question and in the equations (so copying a
            # number is copying tokens); the space before a number stays a token of its own.
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    alphabet = [chr(c) for c in range(32, 127)] + ["\n", "▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[BOT, LATENT, EOT],
    )


def pretrained_tokenizer(name_or_path: str):
    """A pretrained tokenizer with the latent markers (and a pad token when it has none) added."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [BOT, LATENT, EOT]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def build_model(model_cfg: dict, tokenizer):
    """A randomly initialised Llama from the config sizes, or the pretrained model resized to the tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if model_cfg["pretrained"]:
        model = AutoModelForCausalLM.from_pretrained(model_cfg["pretrained"], dtype="float32")
        old = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > old:
            model.resize_token_embeddings(len(tokenizer))
            init_new_embeddings(model, tokenizer, first_new=old)
        return model
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg["hidden_size"],
        intermediate_size=model_cfg["intermediate_size"],
        num_hidden_layers=model_cfg["num_layers"],
        num_attention_heads=model_cfg["num_heads"],
        num_key_value_heads=model_cfg["num_heads"],
        max_position_embeddings=model_cfg["max_position_embeddings"],
        tie_word_embeddings=model_cfg["tie_word_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


def init_new_embeddings(model, tokenizer, first_new: int) -> None:
    """Rows from `first_new` on start as the (mean) embedding of `"<<"`."""
    import torch

    source = tokenizer.encode(INIT_FROM, add_special_tokens=False)
    with torch.no_grad():
        for embedding in {
            id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None
        }.values():
            weight = embedding.weight
            if weight.shape[0] > first_new:
                weight[first_new:] = weight[source].mean(dim=0)


def apply_lora(model, lora_cfg: dict):
    """Wrap the model with peft LoRA adapters when enabled; otherwise return it unchanged."""
    if not lora_cfg["enabled"]:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg["r"],
        lora_alpha=lora_cfg["alpha"],
        lora_dropout=lora_cfg["dropout"],
        target_modules=list(lora_cfg["target_modules"]),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (non-reentrant).

    `activation_checkpointing_enable` is transformers 5's name for `gradient_checkpointing_enable` (now a
    deprecated alias). Non-reentrant checkpointing needs no input that requires grad (frozen embeddings
    under LoRA are fine) and allows the KV-cache handling of the latent loop (LatentReasoner.enable_gradient_checkpointing).
    transformers applies it only to layers in training mode; see `checkpoint_in_eval` for the RL replay.
    """
    kwargs = {"use_reentrant": False}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class checkpoint_in_eval:
    """Within the block, checkpointed layers count as training (so transformers checkpoints them) while every
    other module, dropout included, stays as it is: the RL replay runs in eval mode to see the network the
    rollout sampled from, and would otherwise keep all activations. Only the layers' own flag changes."""

    def __init__(self, model):
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and not m.training
        ]

    def __enter__(self):
        for m in self.layers:
            m.training = True
        return self

    def __exit__(self, *exc):
        for m in self.layers:
            m.training = False
        return False


def save_model(model, tokenizer, out_dir: str | Path, meta: dict) -> None:
    """Save weights (safetensors, LoRA merged) and tokenizer, then `meta.json`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def load_model(path: str | Path):
    """(model, tokenizer) saved by `save_model`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    return model, load_tokenizer(path)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prompt_ids(tokenizer, question: str) -> list[int]:
    """Token ids of a question prompt, with the tokenizer's BOS when it has one (pretrained models)."""
    from atp.text import prompt_text

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode(prompt_text(question), add_special_tokens=False)
