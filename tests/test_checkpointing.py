"""`train.gradient_checkpointing`: the same loss and gradients with and without it, for an SFT model, the
latent loop (whose KV cache transformers would otherwise drop under checkpointing) and the RL replay."""

from __future__ import annotations

import copy

import pytest
import torch

from atp import modeling
from atp.latent import LatentConfig, LatentObjective, LatentReasoner, encode_latent_records
from atp.runtime import seed_everything

TINY_DECODER = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
# Checkpointing recomputes the same float32 operations in the same order, so the gradients should agree
# bit for bit or nearly (measured: see each test's max difference); 1e-6 relative to the largest gradient
# entry (plus 1e-7 absolute) leaves room for kernel nondeterminism while failing on a dropped or doubled
# KV cache, which changes the loss itself.
RTOL, ATOL = 1e-6, 1e-7


def count_mlp_calls(layers) -> list[int]:
    """A counter of the layers' MLP calls: a checkpointed layer runs its MLP again in the backward pass."""
    calls = [0]

    def counted(forward):
        def run(*args, **kwargs):
            calls[0] += 1
            return forward(*args, **kwargs)

        return run

    for layer in layers:  # wrapping forward: transformers' recomputation does not fire forward hooks
        layer.mlp.forward = counted(layer.mlp.forward)
    return calls


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    scale = max(float(v.abs().max()) for v in a.values())
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |gradient difference| {diff:.3e} (largest gradient entry {scale:.3e})")
    assert diff <= RTOL * scale + ATOL
    return diff


def test_sft_loss_and_gradients_are_unchanged(tiny_data):
    from atp.batches import collate, token_loss_sum
    from atp.stages.sft import encode_examples

    cfg, splits, tok = tiny_data
    seed_everything(0)
    plain = modeling.build_model(cfg["model"], tok).train()
    ckpt = copy.deepcopy(plain)
    modeling.enable_gradient_checkpointing(ckpt)
    examples, _ = encode_examples(splits["train"][:8], tok, "cot", 256)
    batch = collate(examples, tok.pad_token_id)
    losses, calls = [], []
    for model in (plain, ckpt):
        counter = count_mlp_calls(model.model.layers)
        loss = token_loss_sum(model, batch)
        loss.backward()
        losses.append(loss.item())
        calls.append(counter[0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert calls == [2, 4]  # 2 layers; recomputed in the backward pass with checkpointing
    assert_same(grads(plain), grads(ckpt))


def latent_pair(tiny_data, variant="atp"):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    plain = LatentReasoner(
        modeling.build_model(cfg["model"], tok), LatentConfig(variant=variant, c=2, max_steps=3, decoder=TINY_DECODER), tok
    )
    ckpt = copy.deepcopy(plain)
    ckpt.enable_gradient_checkpointing()
    return plain, ckpt, splits, tok


@pytest.mark.parametrize("variant", ["atp", "coconut"])
def test_latent_loss_and_gradients_are_unchanged(tiny_data, variant):
    """Every loss term of a latent-SFT batch at the last curriculum stage (all slots latent, KV-cached loop)."""
    plain, ckpt, splits, tok = latent_pair(tiny_data, variant)
    records, _ = encode_latent_records(splits["train"][:8], tok, 256, plain.cfg)
    objective = LatentObjective(plain.cfg, 0, tok.eos_token_id, plain.eot_id)
    step = 10_000  # the last curriculum stage
    totals = objective.totals(records, step)
    parts, calls = [], []
    for model in (plain, ckpt):
        model.train()
        counter = count_mlp_calls(model.core.layers)
        seed_everything(1)  # the same sampled latents
        loss, p = objective.loss(model, records, totals, step, "cpu")
        loss.backward()
        parts.append({k: v.item() for k, v in p.items()})
        calls.append(counter[0])
    assert ckpt.recomputes() and type(ckpt.new_cache()).__name__ == "ReplayableCache"
    # prefix + 6 slot passes + suffix = 8 passes of 2 layers; each recomputed once with checkpointing
    assert calls == [16, 32]
    assert parts[1] == pytest.approx(parts[0], rel=1e-6)
    assert_same(grads(plain), grads(ckpt))


def test_without_the_replayable_cache_checkpointing_would_change_the_latent_loss(tiny_data):
    """What the switch guards against: transformers' checkpointing alone drops the KV cache of every layer."""
    plain, ckpt, splits, tok = latent_pair(tiny_data)
    for layer in ckpt.core.layers:
        layer._can_checkpoint_with_cache = False  # transformers' default for a layer that writes the cache
    records, _ = encode_latent_records(splits["train"][:4], tok, 256, plain.cfg)
    objective = LatentObjective(plain.cfg, 0, tok.eos_token_id, plain.eot_id)
    totals = objective.totals(records, 10_000)
    out = []
    for model in (plain, ckpt):
        model.train()
        seed_everything(1)
        try:
            out.append(objective.loss(model, records, totals, 10_000, "cpu")[1]["ce"].item())
        except Exception as exc:  # noqa: BLE001 - a shape error is as much a failure as a wrong loss
            out.append(repr(exc))
    print(f"latent CE without the replayable cache: {out[1]} (with: {out[0]})")
    assert out[1] != out[0]


def test_rl_replay_loss_and_gradients_are_unchanged(tiny_data):
    """The RL update replays in eval mode; checkpoint_in_eval makes the layers checkpoint there too."""
    from atp.rl import RLConfig, freeze_decoder, group_advantages, ppo_clip_loss, replay, rollout

    plain, ckpt, splits, tok = latent_pair(tiny_data)
    prompts = [modeling.prompt_ids(tok, r["question"]) for r in splits["train"][:4] for _ in range(4)]
    cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, max_answer_tokens=6)
    traj = rollout(plain.eval(), prompts, cfg, torch.Generator().manual_seed(0))
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0] * 4), 4)
    losses, calls = [], []
    for model in (plain, freeze_decoder(ckpt).eval()):
        counter = count_mlp_calls(model.core.layers)
        with modeling.checkpoint_in_eval(model):
            assert model.recomputes() == (model is ckpt)
            new = replay(model, traj, cfg)
        loss, _, _ = ppo_clip_loss(new, traj.old, traj.masks, advantages, cfg)
        loss.backward()
        losses.append(loss.item())
        calls.append(counter[0])
    assert not any(layer.training for layer in ckpt.core.layers)  # restored
    assert calls[1] == 2 * calls[0] > 0  # every replay pass recomputed
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    g_plain = {k: v for k, v in grads(plain).items() if not k.startswith(("decoder.", "decoder_proj."))}
    assert_same(g_plain, grads(ckpt))


@pytest.mark.slow
def test_the_stages_train_the_same_with_the_switch(tiny_data, tmp_path):
    """CoT-SFT -> ATP latent SFT -> RL through the stage CLIs, `train.gradient_checkpointing` off and on:
    the same history (every logged loss term) and the same final weights."""
    import json

    from safetensors.torch import load_file

    from atp import cli, config
    from atp.stages import latent_sft, rl, sft
    from conftest import stage_argv, tiny_config, write_data_dir

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    runs = {}
    for switch in (False, True):
        job = tmp_path / f"job{switch}.yaml"
        config.dump(
            tiny_config(
                train={
                    "steps": 2,
                    "batch_size": 4,
                    "log_every": 1,
                    "checkpoint_every": 10,
                    "val_samples": 0,
                    "gradient_checkpointing": switch,
                },
                latent={"c": 2, "max_steps": 2, "stage_steps": 1, "decoder": TINY_DECODER},
                rl={"questions": 2, "group_size": 2, "minibatch_size": 2, "max_answer_tokens": 4},
                methods={
                    "cot_sft": {"stage": "sft", "format": "cot"},
                    "atp": {"stage": "latent_sft", "variant": "atp"},
                    "atp_rl": {"stage": "rl"},
                },
            ),
            job,
        )
        init = []
        for module, method in ((sft, "cot_sft"), (latent_sft, "atp"), (rl, "atp_rl")):
            out = tmp_path / f"{method}-{switch}"
            cli.run(module.main, cli.training_parser(method), stage_argv(job, method, data, out, *init))
            runs[method, switch] = out
            init = ["--init", str(out / "model")]
    for method in ("cot_sft", "atp", "atp_rl"):
        off, on = (
            [json.loads(line) for line in (runs[method, s] / "history.jsonl").read_text().splitlines()] for s in (False, True)
        )
        keys = [k for k in off[0] if k.startswith(("train/", "rl/loss", "rewards/")) and not k.endswith(("_per_s", "seconds"))]
        assert keys and [h[k] for h in on for k in keys] == pytest.approx(
            [h[k] for h in off for k in keys], rel=1e-6, abs=1e-9
        ), method
        a, b = (load_file(runs[method, s] / "model" / "model.safetensors") for s in (False, True))
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{method}: max |weight difference| off vs on {diff:.3e}")
        assert diff <= 1e-6, method
