"""The latent reasoner: one module for latent SFT, evaluation, `explain` and RL.

A question is followed by `<bot>`, then latent *slots* whose input embeddings are
computed, slot by slot, from the hidden state just before them (the multi-pass
latent loop, reusing the KV cache), then `<eot>` and the text. Variants differ in
what goes into a slot (method.md section 5):

| variant      | slot input                  | KL | step decoder | stop head | surplus slots      |
|--------------|-----------------------------|----|--------------|-----------|--------------------|
| coconut      | last hidden state           | -  | -            | -         | fixed budget       |
| simcot       | last hidden state           | -  | yes          | -         | fixed, decode answer |
| atp          | z ~ N(mu, sigma^2)          | yes| yes          | yes       | masked             |
| atp_no_vae   | mu                          | -  | yes          | yes       | masked             |
| atp_no_stop  | z ~ N(mu, sigma^2)          | yes| yes          | -         | fixed, decode EOS  |
| pause        | one trainable embedding     | -  | -            | -         | fixed budget       |

Slot columns of a batch are aligned (questions are left-padded), and each slot of
each row is ACTIVE (in the context), MASKED (computed, but attention mask 0: the
surplus slots of stop-head variants, and everything after a stop) or ABSENT
(alignment filler for a row with fewer slots). Position ids count only what is in
the context, so training and inference see the same positions.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atp.text import BOT, EOT, LATENT
from atp.train import IGNORE  # noqa: F401 - one definition, shared with the token objective (tests import it from here)
from atp.variants import VARIANTS, Variant  # noqa: F401 - the table lives where the config checks read it without torch

ACTIVE, MASKED, ABSENT = 1, 2, 0


@dataclass(frozen=True)
class LatentConfig:
    """Settings of the latent stage (the `latent` config section, with the method's overrides)."""

    variant: str = "atp"
    c: int = 2  # latents per reasoning step
    max_steps: int = 3  # S: at most S latent steps (c*S slots)
    beta: float = 1e-3  # weight of the KL term
    decoder_weight: float = 1.0  # weight of the step-decoder loss (the paper's is 1)
    rescale: str = "none"  # none | embedding_norm: scale each fed-back vector to the mean token-embedding norm
    scale: float = 1.0  # multiplies every fed-back vector (CoLaR's embedding-std factor)
    head_hidden: int | None = None  # width of the latent and stop heads (None: the backbone's)
    decoder: dict = field(default_factory=lambda: {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128})
    stage_steps: int = 300  # optimizer steps per curriculum stage before the last (the last gets the rest)
    stage_mix: float = 0.0  # chance that an example is drawn at a random earlier curriculum stage
    decode_tokens: int = 16  # longest step text decoded from one latent step

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown latent variant {self.variant!r} (one of {', '.join(VARIANTS)})")
        if self.c < 1 or self.max_steps < 1:
            raise ValueError("latent.c and latent.max_steps must be at least 1")
        if self.rescale not in ("none", "embedding_norm"):
            raise ValueError(f"latent.rescale must be 'none' or 'embedding_norm', not {self.rescale!r}")

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def slots(self) -> int:
        return self.c * self.max_steps

    def stage(self, step: int) -> int:
        """Curriculum stage (latent steps) at optimizer step `step`; the last stage is max_steps."""
        if self.stage_steps <= 0:
            return self.max_steps
        return min(self.max_steps, 1 + step // self.stage_steps)


# ---------------------------------------------------------------- data layout


@dataclass
class LatentRecord:
    """One training problem, tokenized for every curriculum stage."""

    index: int
    prompt: list[int]  # question prompt (with BOS where the tokenizer has one), without <bot>
    steps: list[list[int]]  # each language step line, "<<a op b=c>>\n"
    step_texts: list[list[int]]  # each step for the decoder, "<<a op b=c>>" (EOS added later)
    answer: list[int]  # "### N" + EOS
    answer_text: list[int]  # "### N" (SIM-CoT's pseudo-step for surplus slots)


@dataclass
class Layout:
    """Where one record's slots go at one curriculum stage, and what each is trained on."""

    slot_state: list[int]  # ACTIVE or MASKED per slot (length c * latent steps)
    suffix: list[int]  # <eot> + remaining language steps + answer + EOS
    decoder_targets: list[list[int]]  # per latent step (real, then surplus): text ids + EOS
    stop_labels: list[int]  # per latent step: 1 beyond the real steps


def layout(record: LatentRecord, stage: int, cfg: LatentConfig, eos: int, eot: int) -> Layout:
    """Stage k makes the first k steps latent and gives every record c*k slots (c*S at the last stage).

    A record with fewer than k steps gets surplus slots past its real steps, at every stage and not
    only the last (the paper's and Coconut's data code): fixed-budget variants keep them in the
    context, stop-head variants mask them, label them "stop" and decode them to EOS. So the stop head
    sees positive labels from stage 2 on, and an RL start at a middle stage has a trained stop head.
    """
    spec, S, c = cfg.spec, cfg.max_steps, cfg.c
    n = len(record.steps)
    final = stage >= S
    latent_steps = min(stage, S)
    real = min(latent_steps, n)
    language = [] if final else record.steps[real:]
    surplus = latent_steps - real
    targets = [list(t) for t in record.step_texts[:real]]
    if final and n > S:  # steps beyond the S-th are joined into the S-th decoder target
        targets[-1] = [tok for t in record.step_texts[S - 1 :] for tok in t]
    targets = [t + [eos] for t in targets]
    if spec.surplus_target == "answer":
        targets += [record.answer_text + [eos]] * surplus
    else:
        targets += [[eos]] * surplus
    surplus_state = ACTIVE if spec.surplus == "fixed" else MASKED
    return Layout(
        slot_state=[ACTIVE] * (c * real) + [surplus_state] * (c * surplus),
        suffix=[eot] + [tok for s in language for tok in s] + record.answer,
        decoder_targets=targets,
        stop_labels=[0] * real + [1] * surplus,
    )


def encode_latent_records(records: list[dict], tokenizer, max_length: int, cfg: LatentConfig) -> tuple[list[LatentRecord], int]:
    """Tokenize contract records for the latent stage; records without steps or too long are dropped."""
    from atp.modeling import prompt_ids
    from atp.text import answer_text

    out, dropped = [], 0
    for i, r in enumerate(records):
        prompt = prompt_ids(tokenizer, r["question"])
        steps = [tokenizer.encode(s + "\n", add_special_tokens=False) for s in r["steps"]]
        answer = tokenizer.encode(answer_text(r["answer"]), add_special_tokens=False)
        if not steps or len(prompt) + 2 + cfg.slots + sum(map(len, steps)) + len(answer) + 1 > max_length:
            dropped += 1
            continue
        out.append(
            LatentRecord(
                index=i,
                prompt=prompt,
                steps=steps,
                step_texts=[tokenizer.encode(s, add_special_tokens=False) for s in r["steps"]],
                answer=answer + [tokenizer.eos_token_id],
                answer_text=answer,
            )
        )
    return out, dropped


# ---------------------------------------------------------------- the KV cache under gradient checkpointing


def replayable_cache():
    """A fresh `ReplayableCache` (transformers is imported on first use)."""
    return _replayable_cache_class()()


_CACHE_CLASS = None


def _replayable_cache_class():
    global _CACHE_CLASS
    if _CACHE_CLASS is not None:
        return _CACHE_CLASS
    import copy

    from transformers import DynamicCache

    class ReplayableCache(DynamicCache):
        """A KV cache for one forward pass of the latent loop that gradient checkpointing can recompute.

        With checkpointing, the backward pass runs each decoder layer's forward again, and that forward
        appends its keys and values to the cache a second time: on a plain DynamicCache the recomputed
        attention would see the keys of every later pass (and of itself twice). This cache remembers, per
        layer, what the cache held before the pass's first update; a second update of the same layer (the
        recomputation) returns that start plus the recomputed keys, as the original forward saw them, and
        changes nothing. So every pass gets its own object: `next_pass()` shares the tensors (no copy)
        with a new object, and the loop calls it after every pass (`next_pass(cache)` below).
        """

        def __init__(self, previous=None):
            super().__init__()
            self._start: dict[int, tuple] = {}
            if previous is not None:
                self.layers = [copy.copy(layer) for layer in previous.layers]  # DynamicLayer.update rebinds, never writes in place

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            if layer_idx in self._start:  # the recomputation of this pass's layer
                keys, values = self._start[layer_idx]
                if keys is None:
                    return key_states, value_states
                return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)
            layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
            self._start[layer_idx] = (layer.keys, layer.values) if layer is not None and layer.is_initialized else (None, None)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

        def next_pass(self):
            return ReplayableCache(self)

    _CACHE_CLASS = ReplayableCache
    return _CACHE_CLASS


def next_pass(cache):
    """The cache object for the next forward pass (a new one for a ReplayableCache; any other cache is reused)."""
    return cache.next_pass() if cache is not None and hasattr(cache, "next_pass") else cache


# ---------------------------------------------------------------- the module


def _mlp(d_in: int, hidden: int, d_out: int) -> list[nn.Module]:
    return [nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out)]


def build_decoder(cfg: LatentConfig, vocab_size: int, pad_id: int, eos_id: int):
    """The step decoder: a small causal LM over the backbone's vocabulary, sizes from `latent.decoder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d = cfg.decoder
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_layers"],
            num_attention_heads=d["num_heads"],
            num_key_value_heads=d["num_heads"],
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            bos_token_id=None,
        )
    )


class LatentReasoner(nn.Module):
    """Backbone + latent head + stop head + step decoder, as the variant asks."""

    def __init__(self, backbone, cfg: LatentConfig, tokenizer, decoder=None):
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        spec = cfg.spec
        d = self.core.config.hidden_size
        h = cfg.head_hidden or d
        self.bot_id, self.latent_id, self.eot_id = tokenizer.convert_tokens_to_ids([BOT, LATENT, EOT])
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        if spec.feed in ("sample", "mu"):
            self.latent_trunk = nn.Sequential(*_mlp(d, h, h), nn.LayerNorm(h))
            self.mu_head = nn.Linear(h, d)
            self.logvar_head = nn.Linear(h, d)
        if spec.stop:
            self.stop_head = nn.Sequential(*_mlp(d, h, 2))
        if spec.feed == "pause":
            with torch.no_grad():
                start = self.backbone.get_input_embeddings().weight[self.latent_id].detach().clone()
            self.pause = nn.Parameter(start)
        if spec.decoder:
            self.decoder = decoder if decoder is not None else build_decoder(cfg, len(tokenizer), self.pad_id, self.eos_id)
            self.decoder_proj = nn.Linear(d, self.decoder.config.hidden_size)

    # ------------------------------------------------------------ pieces

    @property
    def core(self):
        """The backbone's transformer body (LlamaModel), through a peft wrapper if there is one."""
        model = self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone
        return model.base_model

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_output_embeddings()(hidden)

    def prefix(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts followed by <bot>, left-padded so that the first slot is one column for every row."""
        from atp.train import left_pad

        return left_pad([p + [self.bot_id] for p in prompts], self.pad_id)

    def embedding_norm(self) -> torch.Tensor | None:
        """The mean token-embedding norm fed-back vectors are scaled to (None unless `rescale: embedding_norm`).

        Computed once per loop, not per slot: on a large vocabulary it reads the whole embedding matrix.
        """
        if self.cfg.rescale != "embedding_norm":
            return None
        return self.backbone.get_input_embeddings().weight.detach().norm(dim=-1).mean()

    def feed_scale(self, v: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        """Bring a fed-back vector to the token-embedding scale `norm` (see embedding_norm), times `scale`."""
        if norm is not None:
            v = v / (v.norm(dim=-1, keepdim=True) + 1e-6) * norm
        return v * self.cfg.scale

    def latent(
        self, h: torch.Tensor, norm: torch.Tensor | None, mode: str = "sample", generator: torch.Generator | None = None, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The latent of the slot after hidden state `h` (B, d): z, what is fed, and mu/logvar where they exist.

        `norm`: the embedding scale of `feed_scale`, computed once by the caller.
        mode: `sample` (the variant's own choice: sampled z for atp and atp_no_stop) or `mu`
        (deterministic); other variants are deterministic either way. A given `z` (sampled
        variants) replaces the draw: RL replays a rollout's latents under the current weights.
        """
        forced = z
        spec = self.cfg.spec
        out: dict[str, torch.Tensor] = {}
        if spec.feed == "hidden":
            z = h
        elif spec.feed == "pause":
            z = self.pause.expand(h.shape[0], -1)
        else:
            a = self.latent_trunk(h)
            mu, logvar = self.mu_head(a), self.logvar_head(a).clamp(-12.0, 6.0)
            out.update(mu=mu, logvar=logvar)
            if forced is not None and spec.feed == "sample":
                z = forced
            elif spec.feed == "sample" and mode != "mu":
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                z = mu + torch.exp(0.5 * logvar) * eps
            else:
                z = mu
        out["z"] = z
        out["feed"] = self.feed_scale(z, norm)
        return out

    # ------------------------------------------------------------ gradient checkpointing

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the backbone's and the step decoder's layer activations in the backward pass (`train.gradient_checkpointing`).

        transformers drops the KV cache of a checkpointed layer (it would be written twice), which would cut
        every slot off from what came before it; the backbone's layers keep it here, and the loop then runs
        on a ReplayableCache, whose recomputed updates return what the first forward saw.
        """
        from atp.modeling import enable_gradient_checkpointing

        enable_gradient_checkpointing(self.backbone)
        for layer in self.core.layers:
            layer._can_checkpoint_with_cache = True
        if self.cfg.spec.decoder:
            enable_gradient_checkpointing(self.decoder)

    def shared_cache_layers(self) -> list[nn.Module]:
        """The backbone's decoder layers: one loop calls each of them again and again (prefix, every slot, suffix),
        the later calls reading the earlier ones' keys and values through the KV cache, so their gradients only
        complete at the very end of the backward pass. FSDP must not shard them one by one (see atp.sharding)."""
        return list(self.core.layers)

    def recomputes(self) -> bool:
        """Whether a backbone forward now would be checkpointed (checkpointing on, a layer in training mode, gradients on)."""
        return torch.is_grad_enabled() and any(getattr(layer, "gradient_checkpointing", False) and layer.training for layer in self.core.layers)

    def new_cache(self):
        """The KV cache of one latent loop: a ReplayableCache when the passes will be recomputed, else a DynamicCache."""
        if self.recomputes():
            return replayable_cache()
        from transformers import DynamicCache

        return DynamicCache()

    # ------------------------------------------------------------ the loop

    def run_prefix_and_slots(
        self,
        prefix: torch.Tensor,
        prefix_mask: torch.Tensor,
        slot_state: torch.Tensor,
        mode: str = "sample",
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        stop_rule: str | None = None,
        forced_z: torch.Tensor | None = None,
    ) -> dict:
        """Run `prefix` (left-padded, ending in <bot>) and then the slots one by one.

        `slot_state` (B, N) says which slots are ACTIVE, MASKED or ABSENT; with `stop_rule`
        (`argmax` or `sample`) the stop head decides instead, at step boundaries, and
        everything from a stop on is MASKED. `use_cache=False` recomputes the whole
        sequence for every slot (the reference the cached loop is tested against).
        `forced_z` (B, N, d) replays given latents instead of drawing them (RL).
        Returns the cache (or the full embeddings), the attention mask, the next position
        of each row and the per-slot latents.
        """
        spec, c = self.cfg.spec, self.cfg.c
        core = self.core
        B, N = slot_state.shape
        embeds = self.embed(prefix)
        mask = prefix_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.new_cache() if use_cache else None
        out = core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=use_cache)
        cache = next_pass(cache)
        h = out.last_hidden_state[:, -1]
        next_pos = positions[:, -1] + 1
        state = slot_state.clone()
        stopped = torch.zeros(B, dtype=torch.bool, device=prefix.device)
        norm = self.embedding_norm()
        records: dict[str, list[torch.Tensor]] = {"feed": [], "z": [], "mu": [], "logvar": [], "stop_logits": []}
        if spec.feed == "pause":  # no feedback (and no stop head): every slot at once
            active = (state == ACTIVE).long()
            feeds = self.feed_scale(self.pause, norm).expand(B, N, -1)
            slot_pos = next_pos[:, None] + active.cumsum(-1) - active
            mask = torch.cat([mask, active], dim=1)
            if use_cache:
                core(inputs_embeds=feeds, attention_mask=mask, position_ids=slot_pos, past_key_values=cache, use_cache=True)
                cache = next_pass(cache)
            else:
                embeds = torch.cat([embeds, feeds], dim=1)
                positions = torch.cat([positions, slot_pos], dim=1)
            records["feed"] = list(feeds.unbind(1))
            return {"cache": cache, "embeds": embeds, "positions": positions, "mask": mask, "next_pos": next_pos + active.sum(-1), "state": state, "latents": records}
        for j in range(N):
            lat = self.latent(h, norm, mode, generator, None if forced_z is None else forced_z[:, j])
            if spec.stop:
                logits = self.stop_head(lat["z"])
                records["stop_logits"].append(logits)
                if stop_rule is not None and j % c == 0:
                    if stop_rule == "argmax":
                        decision = logits.argmax(-1) == 1
                    else:
                        decision = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1) == 1
                    stopped = stopped | decision
            if stop_rule is not None:
                state[:, j] = torch.where(stopped, torch.full_like(state[:, j], MASKED), state[:, j])
            for key in ("feed", "z", "mu", "logvar"):
                if key in lat:
                    records[key].append(lat[key])
            active = (state[:, j] == ACTIVE).long()
            mask = torch.cat([mask, active[:, None]], dim=1)
            if use_cache:
                out = core(inputs_embeds=lat["feed"][:, None], attention_mask=mask, position_ids=next_pos[:, None], past_key_values=cache, use_cache=True)
                cache = next_pass(cache)
                h = out.last_hidden_state[:, -1]
            else:
                embeds = torch.cat([embeds, lat["feed"][:, None]], dim=1)
                positions = torch.cat([positions, next_pos[:, None]], dim=1)
                h = core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state[:, -1]
            next_pos = next_pos + active
            if stop_rule is not None and bool(stopped.all()):
                state[:, j + 1 :] = MASKED
                break
        return {"cache": cache, "embeds": embeds, "positions": positions, "mask": mask, "next_pos": next_pos, "state": state, "latents": records}

    def run_suffix(self, run: dict, suffix: torch.Tensor, suffix_mask: torch.Tensor) -> torch.Tensor:
        """Logits over `suffix` (right-padded) after the prefix and slots of `run`."""
        mask = torch.cat([run["mask"], suffix_mask], dim=1)
        positions = run["next_pos"][:, None] + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.embed(suffix)
        if run["cache"] is not None:
            hidden = self.core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=run["cache"], use_cache=True).last_hidden_state
        else:
            all_embeds = torch.cat([run["embeds"], embeds], dim=1)
            all_pos = torch.cat([run["positions"], positions], dim=1)
            hidden = self.core(inputs_embeds=all_embeds, attention_mask=mask, position_ids=all_pos).last_hidden_state[:, -suffix.shape[1] :]
        return self.logits(hidden)

    # ------------------------------------------------------------ training

    def batch(self, records: list[LatentRecord], stages: list[int], device) -> dict:
        """Tensors of one micro-batch: aligned prefixes, slot states, suffixes and the latent targets."""
        layouts = [layout(r, k, self.cfg, self.eos_id, self.eot_id) for r, k in zip(records, stages)]
        B = len(records)
        prefix, prefix_mask = self.prefix([r.prompt for r in records])
        n_slots = max(len(lay.slot_state) for lay in layouts)
        state = torch.full((B, n_slots), ABSENT, dtype=torch.long)
        s_width = max(len(lay.suffix) for lay in layouts)
        suffix = torch.full((B, s_width), self.pad_id, dtype=torch.long)
        suffix_mask = torch.zeros((B, s_width), dtype=torch.long)
        for b, lay in enumerate(layouts):
            state[b, : len(lay.slot_state)] = torch.tensor(lay.slot_state, dtype=torch.long)
            suffix[b, : len(lay.suffix)] = torch.tensor(lay.suffix)
            suffix_mask[b, : len(lay.suffix)] = 1
        labels = torch.where(suffix_mask.bool(), suffix, torch.full_like(suffix, IGNORE))[:, 1:]
        return {
            "prefix": prefix.to(device),
            "prefix_mask": prefix_mask.to(device),
            "state": state.to(device),
            "suffix": suffix.to(device),
            "suffix_mask": suffix_mask.to(device),
            "labels": labels.to(device),
            "layouts": layouts,
        }

    def decoder_loss_sum(self, feeds: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
        """Summed CE of decoding each row's target text (+EOS) from its c fed-back latents (P, c, d)."""
        c, device = feeds.shape[1], feeds.device
        width = max(len(t) for t in targets)
        tgt = torch.full((len(targets), width), IGNORE, dtype=torch.long)
        inp = torch.full((len(targets), width), self.pad_id, dtype=torch.long)
        for i, t in enumerate(targets):
            tgt[i, : len(t)] = torch.tensor(t)
            inp[i, : len(t)] = torch.tensor(t)
        tgt, inp = tgt.to(device), inp.to(device)
        prefix = self.decoder_proj(feeds)
        embeds = torch.cat([prefix, self.decoder.get_input_embeddings()(inp[:, :-1])], dim=1)
        mask = torch.cat([torch.ones(len(targets), c, dtype=torch.long, device=device), (tgt[:, :-1] != IGNORE).long()], dim=1)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=mask).logits[:, c - 1 :]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1), ignore_index=IGNORE, reduction="sum")

    def loss_sums(self, batch: dict) -> dict[str, torch.Tensor]:
        """Sums of each loss term over a micro-batch (the objective divides them by batch totals)."""
        spec, c = self.cfg.spec, self.cfg.c
        run = self.run_prefix_and_slots(batch["prefix"], batch["prefix_mask"], batch["state"])
        logits = self.run_suffix(run, batch["suffix"], batch["suffix_mask"])[:, :-1]
        sums = {"ce": F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1), ignore_index=IGNORE, reduction="sum")}
        lat = run["latents"]
        present = batch["state"] != ABSENT  # (B, N): the row's own slots, real or surplus
        if spec.kl and lat["mu"]:
            mu, logvar = torch.stack(lat["mu"], 1), torch.stack(lat["logvar"], 1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(-1)
            sums["kl"] = (kl * present).sum()
        if spec.decoder:
            feeds = torch.stack(lat["feed"], 1)  # (B, N, d)
            rows, targets = [], []
            for b, lay in enumerate(batch["layouts"]):
                for i, target in enumerate(lay.decoder_targets):
                    rows.append(feeds[b, i * c : (i + 1) * c])
                    targets.append(target)
            sums["dec"] = self.decoder_loss_sum(torch.stack(rows), targets) if rows else feeds.sum() * 0
        if spec.stop:
            logits_stop, labels = [], []
            for b, lay in enumerate(batch["layouts"]):
                for i, label in enumerate(lay.stop_labels):
                    logits_stop.append(lat["stop_logits"][i * c][b])
                    labels.append(label)
            if logits_stop:
                sums["stop"] = F.cross_entropy(torch.stack(logits_stop).float(), torch.tensor(labels, device=logits.device), reduction="sum")
            else:
                sums["stop"] = logits.sum() * 0
        return sums

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.loss_sums(batch)

    # ------------------------------------------------------------ inference

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], mode: str = "sample", generator: torch.Generator | None = None, max_answer_tokens: int = 16) -> list[dict]:
        """Latent reasoning then greedy answer decoding for a batch of prompts.

        The stop head (argmax) ends reasoning at a step boundary; variants without one
        use the whole budget of c*S latents. Per prompt: answer ids (before EOS), the
        number of latents used and the fed-back latents (for the step decoder).
        """
        device = next(self.parameters()).device
        B = len(prompts)
        prefix, prefix_mask = self.prefix(prompts)
        state = torch.full((B, self.cfg.slots), ACTIVE, dtype=torch.long, device=device)
        run = self.run_prefix_and_slots(prefix.to(device), prefix_mask.to(device), state, mode=mode, generator=generator, stop_rule="argmax" if self.cfg.spec.stop else None)
        used = (run["state"] == ACTIVE).sum(-1)
        feeds = torch.stack(run["latents"]["feed"], 1)
        tokens, taken, _ = self.decode_answer(run, max_answer_tokens)
        ids = answer_ids(tokens, taken, self.eos_id)
        return [{"answer_ids": ids[b], "latents": int(n), "feeds": feeds[b, : int(n)].cpu()} for b, n in enumerate(used)]

    def decode_answer(self, run: dict, max_tokens: int, temperature: float | None = None, generator: torch.Generator | None = None):
        """The answer after <eot>, one token at a time on the run's cache: greedy, or sampled at `temperature`.

        Returns the tokens (B, T; padding after a row's EOS), which of them were taken (through
        the EOS) and, when sampling, each taken token's log-probability (None when greedy).
        """
        B, device = run["mask"].shape[0], run["mask"].device
        token = torch.full((B, 1), self.eot_id, dtype=torch.long, device=device)
        mask, pos, cache = run["mask"], run["next_pos"], run["cache"]
        tokens = torch.full((B, max_tokens), self.pad_id, dtype=torch.long, device=device)
        taken = torch.zeros((B, max_tokens), dtype=torch.bool, device=device)
        logps = torch.zeros((B, max_tokens), device=device) if temperature is not None else None
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_tokens):
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=device)], dim=1)
            hidden = self.core(inputs_embeds=self.embed(token), attention_mask=mask, position_ids=pos[:, None], past_key_values=cache, use_cache=True).last_hidden_state
            cache = next_pass(cache)
            logits = self.logits(hidden[:, -1])
            if temperature is None:
                token = logits.argmax(-1, keepdim=True)
            else:
                logp = (logits.float() / temperature).log_softmax(-1)
                token = torch.multinomial(logp.exp(), 1, generator=generator)
                logps[:, t] = logp.gather(-1, token).squeeze(-1)
            tokens[:, t] = torch.where(done, torch.full_like(token[:, 0], self.pad_id), token[:, 0])
            taken[:, t] = ~done
            done = done | (token[:, 0] == self.eos_id)
            pos = pos + 1
            if bool(done.all()):
                break
        return tokens, taken, logps

    @torch.no_grad()
    def decode_steps(self, feeds: list[torch.Tensor], tokenizer, batch_size: int = 512) -> list[list[str]]:
        """Each latent step (c fed-back latents) decoded to text by the step decoder; [] without one."""
        if not self.cfg.spec.decoder:
            return [[] for _ in feeds]
        c = self.cfg.c
        groups = [(i, f[s * c : (s + 1) * c]) for i, f in enumerate(feeds) for s in range(len(f) // c)]
        texts: list[list[str]] = [[] for _ in feeds]
        device = next(self.parameters()).device
        for start in range(0, len(groups), batch_size):
            chunk = groups[start : start + batch_size]
            prefix = self.decoder_proj(torch.stack([g for _, g in chunk]).to(device))
            out = self.decoder.generate(
                inputs_embeds=prefix,
                attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=device),
                max_new_tokens=self.cfg.decode_tokens,
                do_sample=False,
                eos_token_id=self.eos_id,
                pad_token_id=self.pad_id,
            )
            for (i, _), ids in zip(chunk, out.tolist()):
                ids = ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids
                texts[i].append(tokenizer.decode(ids, skip_special_tokens=True))
        return texts


def answer_ids(tokens: torch.Tensor, taken: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row's answer tokens before its EOS (from `LatentReasoner.decode_answer`)."""
    out = []
    for row, mask in zip(tokens.tolist(), taken.tolist()):
        ids = [t for t, m in zip(row, mask) if m]
        out.append(ids[:-1] if ids and ids[-1] == eos_id else ids)
    return out


class LatentObjective:
    """The latent-SFT loss of method.md section 5, normalised over the effective batch.

    CE per target token + beta * KL per latent dimension + decoder_weight * decoder CE
    per latent step (summed over its tokens) + stop CE per step boundary. The curriculum stage comes
    from the optimizer step; `stage_mix` draws some examples at an earlier stage.
    """

    def __init__(self, cfg: LatentConfig, seed: int, eos_id: int, eot_id: int):
        self.cfg, self.seed, self.eos_id, self.eot_id = cfg, seed, eos_id, eot_id

    def stages(self, records: list[LatentRecord], step: int) -> list[int]:
        stage = self.cfg.stage(step)
        out = []
        for r in records:
            k = stage
            if self.cfg.stage_mix > 0 and stage > 1:
                rng = random.Random(f"{self.seed}-{step}-{r.index}")
                if rng.random() < self.cfg.stage_mix:
                    k = rng.randint(1, stage - 1)
            out.append(k)
        return out

    def totals(self, records: list[LatentRecord], step: int) -> dict[str, float]:
        spec = self.cfg.spec
        t = {"tokens": 0.0, "latents": 0.0, "dec_steps": 0.0, "stops": 0.0}
        for r, k in zip(records, self.stages(records, step)):
            lay = layout(r, k, self.cfg, self.eos_id, self.eot_id)
            t["tokens"] += len(lay.suffix) - 1
            t["latents"] += len(lay.slot_state)
            t["dec_steps"] += len(lay.decoder_targets) if spec.decoder else 0
            t["stops"] += len(lay.stop_labels) if spec.stop else 0
        return {k: max(v, 1.0) for k, v in t.items()}

    def loss(self, model, records: list[LatentRecord], totals: dict[str, float], step: int, device):
        inner = model.module if hasattr(model, "module") else model  # through DDP
        sums = model(inner.batch(records, self.stages(records, step), device))
        parts = {"ce": sums["ce"] / totals["tokens"]}
        loss = parts["ce"]
        if "kl" in sums:
            parts["kl"] = sums["kl"] / totals["latents"]
            loss = loss + self.cfg.beta * parts["kl"]
        if "dec" in sums:
            parts["dec"] = sums["dec"] / totals["dec_steps"]
            loss = loss + self.cfg.decoder_weight * parts["dec"]
        if "stop" in sums:
            parts["stop"] = sums["stop"] / totals["stops"]
            loss = loss + parts["stop"]
            # Share of the step boundaries labelled "stop" (logged): zero all run long would mean an RL start
            # whose stop head never saw a positive label.
            layouts = (layout(r, k, self.cfg, self.eos_id, self.eot_id) for r, k in zip(records, self.stages(records, step)))
            stops = sum(sum(lay.stop_labels) for lay in layouts)
            parts["stop_share"] = torch.tensor(stops / totals["stops"], device=loss.device)
        parts = {k: v.detach() for k, v in parts.items()}
        parts["loss"] = loss.detach()
        return loss, parts


# ---------------------------------------------------------------- saving


def save_latent(model: LatentReasoner, tokenizer, out_dir: str | Path, meta: dict) -> None:
    """Backbone as a plain HF model (LoRA merged), decoder as its own HF model, heads as safetensors."""
    from safetensors.torch import save_file

    from atp.modeling import save_model

    out_dir = Path(out_dir)
    save_model(model.backbone, tokenizer, out_dir, meta)
    heads = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if not k.startswith(("backbone.", "decoder."))}
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
