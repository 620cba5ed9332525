"""The latent reasoner: backbone + latent head + stop head + step decoder, and the multi-pass latent loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from atp.config import LatentConfig
from atp.latent.cache import next_pass, replayable_cache
from atp.latent.layout import ACTIVE, MASKED, step_boundaries
from atp.text import BOT, EOT, LATENT

if TYPE_CHECKING:
    from atp.latent.objective import LatentBatch


@dataclass
class SlotRun:
    """What the latent loop leaves for the answer and the losses: its context (cache, mask, next positions), the
    slot states it ended with, and per slot it ran (n of them, n <= N) what was fed back and drawn, stacked (B, n, ...)."""

    cache: object  # the KV cache of the prefix and the slots
    mask: torch.Tensor  # (B, P + n) attention mask of the context so far
    next_pos: torch.Tensor  # (B,) the next position id of each row
    state: torch.Tensor  # (B, N) ACTIVE / MASKED / ABSENT, stops applied
    feed: torch.Tensor  # (B, n, d) the vectors fed back
    z: torch.Tensor | None = None  # (B, n, d) the latents (variants with a latent head)
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    # (B, n, 2): the stop head's logits at each slot, deciding that slot; for CoLaR, the LM head's log-probabilities
    # of [not <eot>, <eot>] after each slot's latent, deciding whether the next slot runs
    stop_logits: torch.Tensor | None = None
    vector: torch.Tensor | None = None  # (B, n, d) the latent before feed_scale (z itself without a choice variable)
    q_mu: torch.Tensor | None = None  # (B, n, k) the posterior of the choice variable (latent.posterior, in SFT)
    q_logvar: torch.Tensor | None = None

    @property
    def slots_run(self) -> int:
        return self.feed.shape[1]


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


def copy_backbone(backbone):
    """The paper's step decoder: the backbone's architecture with a copy of its current weights, as its own parameters.

    ATP-Latent's and SIM-CoT's code load the step decoder ("explainable LLM") from the same checkpoint as the
    backbone and train both. Under LoRA the copy is of the effective weights (the adapters merged into a copy;
    at the start of a stage they are still zero, so that is the base model) and it is a plain model whose every
    weight trains: LoRA saves the backbone's optimizer state, not the decoder's. Every parameter is a new tensor
    (deepcopy), so training or freezing one model never touches the other.
    """
    import copy

    decoder = copy.deepcopy(backbone)
    if hasattr(decoder, "merge_and_unload"):  # a peft wrapper: fold the adapters in, drop the wrapper
        decoder = decoder.merge_and_unload()
    decoder.requires_grad_(True)
    return decoder


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
            k = cfg.choice
            if k:  # the choice variable's prior, and W mapping it into the latent
                self.choice_mu = nn.Linear(h, k)
                self.choice_logvar = nn.Linear(h, k)
                self.choice_proj = nn.Linear(k, d, bias=False)
                if cfg.posterior:  # q(c | trunk(h), the slot's target step)
                    self.posterior = nn.Sequential(*_mlp(h + d, h, 2 * k))
            else:
                self.logvar_head = nn.Linear(h, d)
            if cfg.head == "residual":  # mu starts as h itself: the correction is 0
                nn.init.zeros_(self.mu_head.weight)
                nn.init.zeros_(self.mu_head.bias)
        if spec.project:  # CODI's projection of the fed hidden state: MLP, then LayerNorm
            self.projection = nn.Sequential(*_mlp(d, h, d), nn.LayerNorm(d))
        if spec.stop:
            self.stop_head = nn.Sequential(*_mlp(d, h, 2))
        if spec.feed == "pause":
            with torch.no_grad():
                start = self.backbone.get_input_embeddings().weight[self.latent_id].detach().clone()
            self.pause = nn.Parameter(start)
        if spec.decoder:
            if decoder is None:
                copied = cfg.decoder_copies_backbone
                decoder = copy_backbone(self.backbone) if copied else build_decoder(cfg, len(tokenizer), self.pad_id, self.eos_id)
            self.decoder = decoder
            # A copied decoder reads the fed-back vectors as they are: they are input embeddings of the backbone, whose
            # embedding space the copy shares (the paper's code feeds z to it directly). A learned square projection
            # would start as a random map that hides the copy's knowledge of that space. A smaller decoder needs the
            # learned projection to its width.
            self.decoder_proj = nn.Identity() if cfg.decoder_copies_backbone else nn.Linear(d, self.decoder.config.hidden_size)

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
        from atp.batches import left_pad

        marker = [self.latent_id] * self.cfg.compression if self.cfg.spec.compress else []  # CoLaR: the factor asked for
        return left_pad([p + marker + [self.bot_id] for p in prompts], self.pad_id)

    def embedding_norm(self) -> torch.Tensor | None:
        """The mean token-embedding norm fed-back vectors are scaled to (None unless `rescale: embedding_norm`).

        Computed once per loop, not per slot: on a large vocabulary it reads the whole embedding matrix. For CoLaR
        (compressing variants) the embedding matrix's std instead: its latent head works in that unit.
        """
        if self.cfg.spec.compress:
            return self.backbone.get_input_embeddings().weight.detach().float().std()
        if self.cfg.rescale != "embedding_norm":
            return None
        return self.backbone.get_input_embeddings().weight.detach().norm(dim=-1).mean()

    def feed_scale(self, v: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        """Bring a fed-back vector to the token-embedding scale `norm` (see embedding_norm), times `scale`."""
        if norm is not None:
            v = v / (v.norm(dim=-1, keepdim=True) + 1e-6) * norm
        return v * self.cfg.scale

    def latent(
        self,
        h: torch.Tensor,
        norm: torch.Tensor | None,
        mode: str = "sample",
        generator: torch.Generator | None = None,
        z: torch.Tensor | None = None,
        temperature: float = 1.0,
        condition: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The latent of the slot after hidden state `h` (B, d): z, what is fed, and mu/logvar where they exist.

        `norm`: the embedding scale of `feed_scale`, computed once by the caller.
        mode: `sample` (the variant's own choice: sampled z for atp and atp_no_stop) or `mu`
        (deterministic); other variants are deterministic either way. A given `z` (sampled
        variants) replaces the draw: RL replays a rollout's latents under the current weights.
        `temperature` scales the Gaussian's standard deviation (logvar + 2 log T, so the returned
        logvar is the distribution z is drawn from): RL's latent exploration (`rl.latent_temperature`).

        With a choice variable (`latent.choice` = k) the Gaussian is over c (k dims): `z`, `mu` and `logvar`
        are c's, and `vector` = m(h) + W c is what is fed (scaled) and what the stop head reads. A
        `condition` (B, d), the slot's target step in SFT, draws c from the posterior instead (`latent.posterior`;
        also returned: `q_mu`, `q_logvar`).
        """
        forced = z
        spec = self.cfg.spec
        out: dict[str, torch.Tensor] = {}
        if spec.feed == "hidden":
            z = self.projection(h) if spec.project else h
        elif spec.feed == "pause":
            z = self.pause.expand(h.shape[0], -1)
        else:
            # The head and its Gaussian in fp32, also under bf16 autocast: with a trained head's small sigma (logvar
            # near -8), a bf16 rounding of mu that differed between a rollout and its replay would move the
            # log-density by many nats and clip actions that should not be.
            with torch.autocast(h.device.type, enabled=False):
                return self._gaussian_latent(h.float(), norm, mode, generator, forced, temperature, condition)
        out["z"] = z
        out["vector"] = z
        out["feed"] = self.feed_scale(z, norm)
        return out

    def _gaussian_latent(self, h, norm, mode, generator, forced, temperature, condition) -> dict[str, torch.Tensor]:
        """`latent` of the variants with a latent head: mu and logvar, and z drawn, given or mu."""
        a = self.latent_trunk(h)
        if self.cfg.choice:
            return self._choice_latent(h, a, norm, mode, generator, forced, temperature, condition)
        mu, logvar = self.mu_head(a), self.logvar_head(a).clamp(-12.0, 6.0)
        if self.cfg.head == "residual":
            mu = h + mu
        if temperature != 1.0:
            logvar = logvar + 2.0 * math.log(temperature)
        z = self._draw(mu, logvar, mode, generator, forced)
        feed = z * norm if self.cfg.spec.compress else self.feed_scale(z, norm)  # CoLaR: back to embedding units
        return {"mu": mu, "logvar": logvar, "z": z, "vector": z, "feed": feed}

    def _draw(self, mu, logvar, mode, generator, forced) -> torch.Tensor:
        """The latent (z, or the choice c) of a Gaussian head: the given one (RL's replay), a draw, or the mean."""
        if forced is not None and self.cfg.spec.feed == "sample":
            return forced.float()
        if self.cfg.spec.feed == "sample" and mode != "mu":
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return mu + torch.exp(0.5 * logvar) * eps
        return mu

    def _choice_latent(self, h, a, norm, mode, generator, forced, temperature, condition) -> dict[str, torch.Tensor]:
        """`latent` with a choice variable c: prior N(mu_c, sigma_c^2) from the head, posterior from `condition`."""
        mean = self.mu_head(a)
        if self.cfg.head == "residual":
            mean = h + mean
        mu, logvar = self.choice_mu(a), self.choice_logvar(a).clamp(-12.0, 6.0)
        if temperature != 1.0:
            logvar = logvar + 2.0 * math.log(temperature)
        out = {"mu": mu, "logvar": logvar}
        draw_mu, draw_logvar = mu, logvar
        if condition is not None and self.cfg.posterior:
            q_mu, q_logvar = self.posterior(torch.cat([a, condition.to(a.dtype)], dim=-1)).chunk(2, dim=-1)
            q_logvar = q_logvar.clamp(-12.0, 6.0)
            out.update(q_mu=q_mu, q_logvar=q_logvar)
            draw_mu, draw_logvar = q_mu, q_logvar
        c = self._draw(draw_mu, draw_logvar, mode, generator, forced)
        vector = mean + self.choice_proj(c)
        out.update(z=c, vector=vector, feed=self.feed_scale(vector, norm))
        return out

    def noise_over_mean(self, run: SlotRun) -> torch.Tensor:
        """(B, n) per slot, the norm of the latent's noise over the norm of the latent at its mean: |z - mu| / |mu|,
        or with a choice variable |W (c - mu_c)| / |m + W mu_c|."""
        noise = run.z - run.mu
        if self.cfg.choice:
            noise = self.choice_proj(noise)
        return noise.float().norm(dim=-1) / (run.vector - noise).float().norm(dim=-1).clamp(min=1e-12)

    # ------------------------------------------------------------ gradient checkpointing

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the backbone's and the step decoder's layer activations in the backward pass
        (`train.gradient_checkpointing`).

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
        return torch.is_grad_enabled() and any(
            getattr(layer, "gradient_checkpointing", False) and layer.training for layer in self.core.layers
        )

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
        stop_rule: str | None = None,
        forced_z: torch.Tensor | None = None,
        latent_temperature: float = 1.0,
        condition: torch.Tensor | None = None,
    ) -> SlotRun:
        """Run `prefix` (left-padded, ending in <bot>) and then the slots one by one.

        `slot_state` (B, N) says which slots are ACTIVE, MASKED or ABSENT; with `stop_rule`
        (`argmax` or `sample`) the stop head decides instead, at step boundaries, and
        everything from a stop on is MASKED. `forced_z` (B, N, d) replays given latents
        instead of drawing them (RL); `latent_temperature` scales the sampled latents' standard
        deviation (RL's exploration; see `latent`). `condition` (B, N, d): each slot's target step, for the
        posterior of a choice variable in SFT (`latent.posterior`). Each pass reads the earlier ones through the KV cache
        (atp.latent.reference recomputes the whole sequence instead: what the tests compare with).
        """
        spec, c = self.cfg.spec, self.cfg.c
        core = self.core
        B, N = slot_state.shape
        embeds = self.embed(prefix)
        mask = prefix_mask
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.new_cache()
        out = core(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        cache = next_pass(cache)
        h = out.last_hidden_state[:, -1]
        next_pos = positions[:, -1] + 1
        state = slot_state.clone()
        stopped = torch.zeros(B, dtype=torch.bool, device=prefix.device)
        norm = self.embedding_norm()
        keys = ("feed", "z", "mu", "logvar", "vector", "q_mu", "q_logvar")
        records: dict[str, list[torch.Tensor]] = {key: [] for key in (*keys, "stop_logits")}
        boundary = step_boundaries(N, c).tolist()
        if spec.feed == "pause":  # no feedback (and no stop head): every slot at once
            active = (state == ACTIVE).long()
            feeds = self.feed_scale(self.pause, norm).expand(B, N, -1)
            slot_pos = next_pos[:, None] + active.cumsum(-1) - active
            mask = torch.cat([mask, active], dim=1)
            core(inputs_embeds=feeds, attention_mask=mask, position_ids=slot_pos, past_key_values=cache, use_cache=True)
            return SlotRun(next_pass(cache), mask, next_pos + active.sum(-1), state, feeds)
        for j in range(N):
            lat = self.latent(
                h,
                norm,
                mode,
                generator,
                None if forced_z is None else forced_z[:, j],
                latent_temperature,
                None if condition is None else condition[:, j],
            )
            if spec.stop:
                logits = self.stop_head(lat["vector"])
                records["stop_logits"].append(logits)
                if stop_rule is not None and boundary[j]:
                    if stop_rule == "argmax":
                        decision = logits.argmax(-1) == 1
                    else:
                        decision = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1) == 1
                    stopped = stopped | decision
            if stop_rule is not None:
                state[:, j] = torch.where(stopped, torch.full_like(state[:, j], MASKED), state[:, j])
            for key in keys:
                if key in lat:
                    records[key].append(lat[key])
            active = (state[:, j] == ACTIVE).long()
            mask = torch.cat([mask, active[:, None]], dim=1)
            out = core(
                inputs_embeds=lat["feed"][:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
                use_cache=True,
            )
            cache = next_pass(cache)
            h = out.last_hidden_state[:, -1]
            next_pos = next_pos + active
            if spec.compress:  # CoLaR: the LM head ends the latents by saying <eot>
                logits = self.logits(h).float()
                records["stop_logits"].append(eot_or_not(logits.log_softmax(-1), self.eot_id))
                if stop_rule == "argmax":
                    stopped = stopped | (logits.argmax(-1) == self.eot_id)
                elif stop_rule is not None:
                    said = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
                    stopped = stopped | (said == self.eot_id)
            if stop_rule is not None and bool(stopped.all()):
                state[:, j + 1 :] = MASKED
                break
        stacked = {k: torch.stack(v, 1) if v else None for k, v in records.items()}
        if stacked["feed"] is None:  # no slot to run
            stacked["feed"] = h.new_zeros((B, 0, h.shape[-1]))
        return SlotRun(cache, mask, next_pos, state, **stacked)

    def run_suffix(self, run: SlotRun, suffix: torch.Tensor, suffix_mask: torch.Tensor, hidden_states: bool = False):
        """Logits over `suffix` (right-padded) after the prefix and slots of `run`; with `hidden_states`, also every
        layer's hidden states over the suffix (the embeddings' first), for CODI's alignment."""
        mask = torch.cat([run.mask, suffix_mask], dim=1)
        positions = run.next_pos[:, None] + (suffix_mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.embed(suffix)
        out = self.core(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=run.cache,
            use_cache=True,
            output_hidden_states=hidden_states,
        )
        logits = self.logits(out.last_hidden_state)
        return (logits, out.hidden_states) if hidden_states else logits

    # ------------------------------------------------------------ training

    def forward(self, batch: LatentBatch) -> dict[str, torch.Tensor]:
        """The sums of the latent-SFT loss terms over a micro-batch (atp.latent.objective.loss_sums); a module's
        forward, so that DDP and FSDP see the training pass."""
        from atp.latent.compress import CompressedBatch, compressed_loss_sums
        from atp.latent.objective import loss_sums

        return compressed_loss_sums(self, batch) if isinstance(batch, CompressedBatch) else loss_sums(self, batch)

    # ------------------------------------------------------------ inference

    def stop_rule(self, mode: str) -> str | None:
        """How inference ends the latents: the stop head's argmax; for CoLaR the LM head's <eot>, sampled with sampled
        latents as CoLaR does (argmax with mu latents); None: the whole budget."""
        if self.cfg.spec.compress:
            return "argmax" if mode == "mu" else "sample"
        return "argmax" if self.cfg.spec.stop else None

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        mode: str = "sample",
        generator: torch.Generator | None = None,
        max_answer_tokens: int = 16,
    ) -> list[dict]:
        """Latent reasoning then greedy answer decoding for a batch of prompts.

        The stop head (argmax) ends reasoning at a step boundary; variants without one
        use the whole budget of c*S latents. Per prompt: answer ids (before EOS), the
        number of latents used and the fed-back latents (for the step decoder).
        """
        device = next(self.parameters()).device
        B = len(prompts)
        prefix, prefix_mask = self.prefix(prompts)
        state = torch.full((B, self.cfg.slots), ACTIVE, dtype=torch.long, device=device)
        run = self.run_prefix_and_slots(
            prefix.to(device),
            prefix_mask.to(device),
            state,
            mode=mode,
            generator=generator,
            stop_rule=self.stop_rule(mode),
        )
        used = (run.state == ACTIVE).sum(-1)
        feeds = run.feed
        tokens, taken, _ = self.decode_answer(run, max_answer_tokens)
        ids = answer_ids(tokens, taken, self.eos_id)
        return [{"answer_ids": ids[b], "latents": int(n), "feeds": feeds[b, : int(n)].cpu()} for b, n in enumerate(used)]

    def decode_answer(
        self, run: SlotRun, max_tokens: int, temperature: float | None = None, generator: torch.Generator | None = None
    ):
        """The answer after <eot>, one token at a time on the run's cache: greedy, or sampled at `temperature`.

        Returns the tokens (B, T; padding after a row's EOS), which of them were taken (through
        the EOS) and, when sampling, each taken token's log-probability (None when greedy).
        """
        B, device = run.mask.shape[0], run.mask.device
        token = torch.full((B, 1), self.eot_id, dtype=torch.long, device=device)
        mask, pos, cache = run.mask, run.next_pos, run.cache
        tokens = torch.full((B, max_tokens), self.pad_id, dtype=torch.long, device=device)
        taken = torch.zeros((B, max_tokens), dtype=torch.bool, device=device)
        logps = torch.zeros((B, max_tokens), device=device) if temperature is not None else None
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for t in range(max_tokens):
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=device)], dim=1)
            hidden = self.core(
                inputs_embeds=self.embed(token),
                attention_mask=mask,
                position_ids=pos[:, None],
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
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


def eot_or_not(logp: torch.Tensor, eot_id: int) -> torch.Tensor:
    """(B, 2) log-probabilities of [any token but <eot>, <eot>] from the LM head's (B, V): CoLaR's stop as a
    two-way choice (RL scores it like a stop head's)."""
    rest = torch.logsumexp(torch.cat([logp[:, :eot_id], logp[:, eot_id + 1 :]], dim=-1), dim=-1)
    return torch.stack([rest, logp[:, eot_id]], dim=-1)


def answer_ids(tokens: torch.Tensor, taken: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each row's answer tokens before its EOS (from `LatentReasoner.decode_answer`)."""
    out = []
    for row, mask in zip(tokens.tolist(), taken.tolist()):
        ids = [t for t, m in zip(row, mask) if m]
        out.append(ids[:-1] if ids and ids[-1] == eos_id else ids)
    return out
