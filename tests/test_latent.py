"""The latent reasoner: the cached loop, the curriculum layout, the stop head, every variant, save/load."""

from __future__ import annotations

import math

import pytest
import torch

from atp import modeling
from atp.config import TrainConfig, to_dataclass
from atp.evaluate import latent_generate, score_latent, step_fidelity
from atp.latent import (
    ACTIVE,
    IGNORE,
    MASKED,
    VARIANTS,
    LatentConfig,
    LatentObjective,
    LatentReasoner,
    LatentRecord,
    encode_latent_records,
    layout,
    load_latent,
    make_batch,
    save_latent,
)
from atp.latent.reference import recomputed_logits
from atp.runtime import Dist, seed_everything
from atp.train import train
from conftest import Recorder

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TINY_DECODER = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}


def make(tiny_data, variant: str, **overrides):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    latent_cfg = LatentConfig(variant=variant, **{"decoder": TINY_DECODER, **overrides})
    model = LatentReasoner(modeling.build_model(cfg["model"], tok), latent_cfg, tok)
    records, _ = encode_latent_records(splits["train"][:64], tok, 256, latent_cfg)
    return model, records, tok


# ---------------------------------------------------------------- the layout


def record(n_steps: int) -> LatentRecord:
    steps = [[10 + i, 1] for i in range(n_steps)]  # token 1 stands for the newline
    return LatentRecord(
        index=0, prompt=[5, 6], steps=steps, step_texts=[[10 + i] for i in range(n_steps)], answer=[7, 8, 99], answer_text=[7, 8]
    )


EOS, EOT = 99, 98


def test_stage_k_makes_the_first_k_steps_latent_and_keeps_the_rest_as_text():
    cfg = LatentConfig(variant="atp", c=2, max_steps=4)
    lay = layout(record(3), 1, cfg, EOS, EOT)
    assert lay.slot_state == [ACTIVE, ACTIVE]
    assert lay.suffix == [EOT, 11, 1, 12, 1, 7, 8, 99]
    assert lay.decoder_targets == [[10, EOS]] and lay.stop_labels == [0]
    lay = layout(record(3), 2, cfg, EOS, EOT)
    assert lay.slot_state == [ACTIVE] * 4 and lay.suffix == [EOT, 12, 1, 7, 8, 99]


def test_the_last_stage_pads_to_c_times_s_slots_per_variant():
    rec = record(3)
    atp = layout(rec, 4, LatentConfig(variant="atp", c=2, max_steps=4), EOS, EOT)
    assert atp.slot_state == [ACTIVE] * 6 + [MASKED] * 2  # surplus slots leave the context; the stop head learns them
    assert atp.suffix == [EOT, 7, 8, 99]
    assert atp.decoder_targets == [[10, EOS], [11, EOS], [12, EOS], [EOS]] and atp.stop_labels == [0, 0, 0, 1]
    coconut = layout(rec, 4, LatentConfig(variant="coconut", c=2, max_steps=4), EOS, EOT)
    assert coconut.slot_state == [ACTIVE] * 8  # fixed budget: the step count does not leak
    simcot = layout(rec, 4, LatentConfig(variant="simcot", c=2, max_steps=4), EOS, EOT)
    assert simcot.decoder_targets[-1] == [7, 8, EOS]  # the surplus step decodes a pseudo-step holding the answer


@pytest.mark.parametrize(
    "variant, state, targets, stops",
    [
        ("atp", [ACTIVE] * 2 + [MASKED] * 2, [[10, EOS], [EOS]], [0, 1]),
        ("atp_no_vae", [ACTIVE] * 2 + [MASKED] * 2, [[10, EOS], [EOS]], [0, 1]),
        ("atp_no_stop", [ACTIVE] * 4, [[10, EOS], [EOS]], [0, 1]),
        ("simcot", [ACTIVE] * 4, [[10, EOS], [7, 8, EOS]], [0, 1]),
        ("coconut", [ACTIVE] * 4, [[10, EOS], [EOS]], [0, 1]),
        ("pause", [ACTIVE] * 4, [[10, EOS], [EOS]], [0, 1]),
    ],
)
def test_a_record_with_fewer_steps_than_the_stage_gets_surplus_slots_before_the_last_stage(variant, state, targets, stops):
    """Stage 2 of 4, a one-step record: c*k = 4 slots, the second latent step is surplus (the paper's data code).

    Stop-head variants mask it and learn "stop" there; fixed-budget variants keep it in the context.
    (Decoder targets and stop labels are used only by the variants that have a decoder or a stop head.)
    """
    lay = layout(record(1), 2, LatentConfig(variant=variant, c=2, max_steps=4), EOS, EOT)
    assert lay.slot_state == state
    assert lay.suffix == [EOT, 7, 8, 99]
    assert lay.decoder_targets == targets
    assert lay.stop_labels == stops


def test_stop_labels_appear_at_every_stage_from_the_second_on():
    cfg = LatentConfig(variant="atp", c=2, max_steps=4)
    assert [layout(record(1), k, cfg, EOS, EOT).stop_labels for k in (1, 2, 3, 4)] == [[0], [0, 1], [0, 1, 1], [0, 1, 1, 1]]
    assert [sum(layout(record(2), k, cfg, EOS, EOT).stop_labels) for k in (1, 2, 3, 4)] == [0, 0, 1, 2]


def test_the_share_of_stop_labels_is_logged_with_the_loss(tiny_data):
    """`stop_share` (stop labels / step boundaries of the batch) shows whether a run ever trained its stop head to stop."""
    model, records, tok = make(tiny_data, "atp", c=1, max_steps=4, stage_steps=1)
    objective = LatentObjective(model.cfg, 0, tok.eos_token_id, model.eot_id)
    batch = records[:8]
    for step in (0, 3):
        layouts = [layout(r, model.cfg.stage(step), model.cfg, tok.eos_token_id, model.eot_id) for r in batch]
        labels = [label for lay in layouts for label in lay.stop_labels]
        _, parts = objective.loss(model, batch, objective.totals(batch, step), step, torch.device("cpu"))
        assert parts["stop_share"].item() == pytest.approx(sum(labels) / len(labels))
        assert (parts["stop_share"].item() > 0) == (step == 3)  # stage 1: no surplus slot; stage 4: short problems stop


def test_steps_beyond_s_join_the_last_decoder_target():
    lay = layout(record(5), 3, LatentConfig(variant="atp", c=1, max_steps=3), EOS, EOT)
    assert lay.slot_state == [ACTIVE] * 3 and lay.suffix == [EOT, 7, 8, 99]
    assert lay.decoder_targets == [[10, EOS], [11, EOS], [12, 13, 14, EOS]]


def test_a_batch_aligns_slots_and_takes_no_loss_on_eot_or_padding(tiny_data):
    model, records, _ = make(tiny_data, "atp", c=2, max_steps=4)
    few = [r for r in records if len(r.steps) == 1][:1] + [r for r in records if len(r.steps) == 3][:1]
    batch = make_batch(model, few, [2, 2], "cpu")
    assert batch.state.tolist() == [[ACTIVE, ACTIVE, MASKED, MASKED], [ACTIVE] * 4]  # c*k slots for every row
    assert (batch.prefix[:, -1] == model.bot_id).all()  # left-padded: <bot> in the same column
    first = batch.layouts[0].suffix
    assert batch.labels[0, : len(first) - 1].tolist() == first[1:]  # the token after <eot> on
    assert (batch.labels[0, len(first) - 1 :] == IGNORE).all()


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("variant", ["coconut", "atp", "pause"])
def test_the_cached_loop_equals_full_recomputation(tiny_data, variant):
    """Tolerance 1e-5: the two paths sum the same float32 products in a different order."""
    model, records, _ = make(tiny_data, variant, c=2, max_steps=4)
    model.eval()
    batch = make_batch(model, records[:6], [4] * 6, "cpu")
    with torch.no_grad():
        cached = model.run_suffix(
            model.run_prefix_and_slots(batch.prefix, batch.prefix_mask, batch.state, mode="mu"), batch.suffix, batch.suffix_mask
        )
        full = recomputed_logits(model, batch.prefix, batch.prefix_mask, batch.state, batch.suffix, batch.suffix_mask, mode="mu")
    valid = batch.suffix_mask.bool()
    assert torch.allclose(cached[valid], full[valid], atol=1e-5), (cached[valid] - full[valid]).abs().max()


def test_the_residual_head_starts_at_the_hidden_state_and_the_papers_head_does_not(tiny_data):
    h = torch.randn(3, tiny_data[0]["model"]["hidden_size"])
    residual, _, _ = make(tiny_data, "atp_no_vae", head="residual")
    assert torch.equal(residual.latent(h, None, mode="mu")["mu"], h)
    paper, _, _ = make(tiny_data, "atp_no_vae")
    assert not torch.allclose(paper.latent(h, None, mode="mu")["mu"], h)
    with pytest.raises(ValueError, match="head: must be"):
        LatentConfig(head="resid")


def test_the_stop_head_spends_a_multiple_of_c_latents_never_more_than_c_times_s(tiny_data):
    model, records, tok = make(tiny_data, "atp", c=2, max_steps=3)
    model.eval()
    prompts = [r.prompt for r in records[:16]]
    last = model.stop_head[-1]
    for bias, expected in ((-50.0, {6}), (50.0, {0}), (0.0, None)):
        with torch.no_grad():
            last.weight.mul_(0.0 if expected else 1.0)
            last.bias.copy_(torch.tensor([0.0, bias]))
            if expected is None:  # random decisions: any multiple of c up to c*S
                last.weight.normal_(0, 5.0)
        used = [o["latents"] for o in model.generate(prompts, mode="sample", generator=torch.Generator().manual_seed(0))]
        assert all(n % 2 == 0 and 0 <= n <= 6 for n in used), used
        if expected is not None:
            assert set(used) == expected


def test_tokens_are_latents_plus_answer_tokens(tiny_data):
    model, records, tok = make(tiny_data, "atp", c=1, max_steps=4)
    _, splits, _ = tiny_data
    val = splits["val"][:5]
    generations = latent_generate(model, tok, [r["question"] for r in val], "sample", 0, 4, 6, "cpu")
    _, metrics = score_latent(val, generations)
    assert metrics["tokens"] == pytest.approx(metrics["latents"] + metrics["answer_tokens"])
    assert all(len(g["steps"]) == g["latents"] for g in generations)  # c = 1: one decoded step per latent


def test_step_fidelity_needs_a_true_equation_with_a_gold_intermediate_result():
    gold = ["<<3*4=12>>", "<<12-5=7>>"]
    assert step_fidelity("<<4*3=12>>", gold)  # an equivalent order still counts
    assert not step_fidelity("<<3*4=13>>", gold)  # false arithmetic
    assert not step_fidelity("<<2*6=12>>x", gold) and not step_fidelity("garbage", gold)
    assert not step_fidelity("<<1+1=2>>", gold)  # true, but not a step of this problem


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_trains_with_finite_loss_and_round_trips_through_disk(tiny_data, variant, tmp_path):
    model, records, tok = make(tiny_data, variant, c=1, max_steps=4, stage_steps=1)
    cfg = to_dataclass(TrainConfig, {**tiny_data[0]["train"], "steps": 4, "log_every": 1, "checkpoint_every": 100}, "train")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = Recorder()
    objective = LatentObjective(model.cfg, 0, tok.eos_token_id, model.eot_id)
    train(model, records, cfg, CPU, 0, tmp_path / "ckpt", objective, recorder, {}, lengths=[len(r.prompt) for r in records])
    losses = [m["train/loss"] for _, m in recorder.logged if "train/loss" in m]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    expected_parts = (
        {"ce"}
        | ({"kl"} if VARIANTS[variant].kl else set())
        | ({"dec"} if VARIANTS[variant].decoder else set())
        | ({"stop"} if VARIANTS[variant].stop else set())
        | ({"teacher", "distill"} if VARIANTS[variant].distill else set())
        | ({"embed"} if VARIANTS[variant].compress else set())
    )
    assert expected_parts <= {k[6:] for k in recorder.logged[-1][1]}
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed)
    if variant == "pause":
        assert "pause" in changed
    if VARIANTS[variant].project:
        assert any(k.startswith("projection.") for k in changed)
    save_latent(model, tok, tmp_path / "model", {"variant": variant})
    loaded, _ = load_latent(tmp_path / "model")
    prompts = [r.prompt for r in records[:4]]
    a = model.generate(prompts, mode="mu")
    b = loaded.generate(prompts, mode="mu")
    assert [x["answer_ids"] for x in a] == [x["answer_ids"] for x in b] and [x["latents"] for x in a] == [x["latents"] for x in b]


def test_a_short_overfit_run_drives_the_decoder_loss_down(tiny_data, tmp_path):
    model, records, tok = make(tiny_data, "atp", c=1, max_steps=4, stage_steps=0)
    cfg = to_dataclass(
        TrainConfig,
        {
            **tiny_data[0]["train"],
            "steps": 30,
            "batch_size": 4,
            "lr": 1e-2,
            "warmup_ratio": 0.0,
            "log_every": 5,
            "checkpoint_every": 1000,
        },
        "train",
    )
    recorder = Recorder()
    few = records[:4]  # one batch, seen 30 times
    train(
        model,
        few,
        cfg,
        CPU,
        0,
        tmp_path / "ckpt",
        LatentObjective(model.cfg, 0, tok.eos_token_id, model.eot_id),
        recorder,
        {},
        lengths=[1] * 4,
    )
    first, last = recorder.logged[1][1]["train/dec"], recorder.logged[-1][1]["train/dec"]  # [0]: resumed_from_step
    assert last < 0.5 * first, (first, last)


def test_explain_decodes_each_latent_step_of_one_question(tiny_data, tmp_path):
    from atp.explain import explain, main

    model, records, tok = make(tiny_data, "atp", c=1, max_steps=3)
    save_latent(model, tok, tmp_path / "model", {})
    question = tiny_data[1]["val"][0]["question"]
    runs = explain(str(tmp_path / "model"), question, samples=2)
    assert [r["mode"] for r in runs] == ["mu", "sample seed 0", "sample seed 1"]
    for run in runs:
        assert len(run["steps"]) == run["latents"] <= 3 and run["tokens"] >= run["latents"]
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "missing"), "--question", question])


def test_the_paper_configs_rl_start_has_trained_its_stop_head_on_stop_labels():
    """config/paper.yaml starts RL from atp_e15 (curriculum stage 8 of 10): most of its steps must carry stop labels.

    GSM8K-Aug has many problems of 2-4 steps; at stage k every record with fewer than k steps has surplus
    slots labelled "stop", so a stage-8 policy has seen them for most of its training.
    """
    from pathlib import Path

    from atp import config

    root = Path(__file__).resolve().parents[1]
    paper = config.load(root / "config" / "config.yaml", root / "config" / "paper.yaml")
    rl_start = paper["methods"]["atp_rl"]["init"]
    cfg = LatentConfig(**{**config.method_latent(paper, rl_start), "variant": paper["methods"][rl_start]["variant"]})
    steps = config.method_train(paper, rl_start)["steps"]
    final_stage = cfg.stage(steps - 1)
    assert 2 <= final_stage < cfg.max_steps  # a middle stage, as in the paper
    three_steps = record(3)
    stages = [cfg.stage(step) for step in range(0, steps, cfg.stage_steps)]
    with_stop = [k for k in stages if 1 in layout(three_steps, k, cfg, EOS, EOT).stop_labels]
    assert len(with_stop) >= len(stages) // 2  # stages 4..8 of a 3-step record: stop labels for most of the run
    assert layout(three_steps, final_stage, cfg, EOS, EOT).stop_labels == [0, 0, 0] + [1] * (final_stage - 3)


# ---------------------------------------------------------------- the paper's decoder: a copy of the backbone


def test_the_copied_decoder_starts_as_the_backbone_trains_apart_round_trips_and_rl_freezes_it(tiny_data, tmp_path):
    """`latent.decoder.copy_backbone`: the backbone's architecture and weights, its own tensors, no projection."""
    from atp.rl import freeze_decoder

    model, records, tok = make(tiny_data, "atp", c=1, max_steps=3, stage_steps=1, decoder={"copy_backbone": True})
    assert isinstance(model.decoder_proj, torch.nn.Identity)
    backbone, decoder = model.backbone.state_dict(), model.decoder.state_dict()
    assert backbone.keys() == decoder.keys() and model.decoder.config.hidden_size == model.backbone.config.hidden_size
    assert all(torch.equal(backbone[k], decoder[k]) for k in backbone)
    shared = {p.data_ptr() for p in model.backbone.parameters()} & {p.data_ptr() for p in model.decoder.parameters()}
    assert not shared  # its own parameters, not tied to the backbone's

    cfg = to_dataclass(TrainConfig, {**tiny_data[0]["train"], "steps": 3, "log_every": 1, "checkpoint_every": 100}, "train")
    objective = LatentObjective(model.cfg, 0, tok.eos_token_id, model.eot_id)
    start = {k: v.clone() for k, v in decoder.items()}
    train(model, records, cfg, CPU, 0, tmp_path / "ckpt", objective, Recorder(), {}, lengths=[len(r.prompt) for r in records])
    backbone, decoder = model.backbone.state_dict(), model.decoder.state_dict()
    assert any(not torch.equal(start[k], decoder[k]) for k in decoder)  # the decoder trains
    assert any(not torch.equal(backbone[k], decoder[k]) for k in backbone)  # and moves apart from the backbone
    save_latent(model, tok, tmp_path / "model", {})
    loaded, _ = load_latent(tmp_path / "model")
    assert loaded.cfg.decoder_copies_backbone and isinstance(loaded.decoder_proj, torch.nn.Identity)
    assert all(torch.equal(v, loaded.decoder.state_dict()[k]) for k, v in decoder.items())
    assert not list((tmp_path / "model").rglob("*.bin")) and not list((tmp_path / "model").rglob("*.pt"))  # safetensors only
    feeds = [x["feeds"] for x in model.generate([r.prompt for r in records[:3]], mode="mu")]
    assert model.decode_steps(feeds, tok) == loaded.decode_steps(feeds, tok)

    policy = freeze_decoder(loaded)
    assert not any(p.requires_grad for p in policy.decoder.parameters())
    assert all(p.requires_grad for p in policy.backbone.parameters())


def test_the_copied_decoder_of_a_lora_backbone_has_the_merged_weights_and_trains_every_weight(tiny_data):
    """Under LoRA the copy is a plain model (adapters merged in), every weight trainable; the backbone keeps its adapters."""
    cfg, _, tok = tiny_data
    seed_everything(0)
    backbone = modeling.apply_lora(modeling.build_model(cfg["model"], tok), {**cfg["model"]["lora"], "enabled": True, "r": 2})
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)  # adapters that change the output, as after some training
    model = LatentReasoner(backbone, LatentConfig(variant="simcot", decoder={"copy_backbone": True}), tok)
    assert not any("lora_" in n for n, _ in model.decoder.named_parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert any("lora_" in n for n, _ in model.backbone.named_parameters())
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(model.decoder(input_ids=x).logits, model.backbone(input_ids=x).logits, atol=1e-5)


def test_the_paper_config_copies_the_backbone_and_the_default_keeps_the_small_decoder():
    from pathlib import Path

    from atp import config

    root = Path(__file__).resolve().parents[1]
    default = config.load(root / "config" / "config.yaml")
    paper = config.load(root / "config" / "config.yaml", root / "config" / "paper.yaml")
    for method in ("simcot", "atp", "atp_e15"):
        assert LatentConfig(**{**config.method_latent(paper, method), "variant": "atp"}).decoder_copies_backbone, method
    assert "copy_backbone" not in config.method_latent(default, "atp")["decoder"]  # the default run's job configs are unchanged
    assert not LatentConfig(**{**config.method_latent(default, "atp"), "variant": "atp"}).decoder_copies_backbone


def test_the_majority_vote_over_sampled_chains_is_the_most_frequent_answer_of_the_first_k(tiny_data):
    from atp.config import EvalConfig
    from atp.evaluate import majority_vote
    from atp.stages.evaluate import evaluate_latent

    cfg, splits, tok = tiny_data
    seed_everything(0)
    model = LatentReasoner(modeling.build_model(cfg["model"], tok), LatentConfig(variant="atp", c=2, max_steps=2), tok).eval()
    records = splits["val"][:6]
    eval_cfg = EvalConfig(batch_size=8, max_new_tokens=8, limit=None, samples=2, max_answer_tokens=4, vote=3)
    predictions, metrics = evaluate_latent(model, tok, records, eval_cfg, "cpu")
    assert metrics["samples"] == 2 and metrics["vote"] == 3 and len(metrics["accuracy_runs"]) == 2
    assert metrics["accuracy_vote"] == sum(p["correct_vote"] for p in predictions) / 6
    # The vote is over sampled runs with seeds 0, 1, 2 (the first two are the reported sampled evaluations).
    again = [evaluate_latent(model, tok, records, EvalConfig(8, 8, None, 1, 4), "cpu")]
    assert again[0][0][0]["prediction"] == predictions[0]["prediction"]
    assert majority_vote([["2", None], ["2.0", None], ["3", None]]) == ["2", None]


# ---------------------------------------------------------------- the choice variable and the posterior


@pytest.mark.parametrize("posterior", [False, True])
def test_a_choice_variable_trains_and_round_trips_and_rl_scores_it_over_k_dimensions(tiny_data, posterior, tmp_path):
    from atp.latent.objective import make_batch
    from atp.rl import RLConfig, replay, rollout

    model, records, tok = make(tiny_data, "atp", c=1, max_steps=3, stage_steps=1, choice=3, posterior=posterior)
    cfg = to_dataclass(TrainConfig, {**tiny_data[0]["train"], "steps": 4, "log_every": 1, "checkpoint_every": 100}, "train")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = Recorder()
    objective = LatentObjective(model.cfg, 0, tok.eos_token_id, model.eot_id)
    train(model, records, cfg, CPU, 0, tmp_path / "ckpt", objective, recorder, {}, lengths=[len(r.prompt) for r in records])
    assert all(math.isfinite(m["train/loss"]) for _, m in recorder.logged if "train/loss" in m)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"choice_mu.weight", "choice_proj.weight"} <= changed and ("posterior.0.weight" in changed) == posterior
    # In SFT a posterior draws c (and records q); at inference the prior does.
    batch = make_batch(model, records[:4], [3] * 4, "cpu")
    from atp.latent.objective import step_conditions

    trained = model.run_prefix_and_slots(batch.prefix, batch.prefix_mask, batch.state, condition=step_conditions(model, batch))
    assert trained.z.shape[-1] == 3 and trained.vector.shape[-1] == model.core.config.hidden_size
    assert (trained.q_mu is not None) == posterior
    save_latent(model, tok, tmp_path / "model", {})
    loaded, _ = load_latent(tmp_path / "model")
    prompts = [r.prompt for r in records[:4]]
    assert [x["answer_ids"] for x in model.generate(prompts, mode="mu")] == [
        x["answer_ids"] for x in loaded.generate(prompts, mode="mu")
    ]
    # RL's latent action is c: its log-density has k dimensions, and replay reproduces the rollout's.
    rl_cfg = RLConfig(questions=2, group_size=2, minibatch_size=4, max_answer_tokens=4)
    traj = rollout(model.eval(), prompts, rl_cfg, torch.Generator().manual_seed(0))
    assert traj.z.shape[-1] == 3 and torch.isfinite(traj.noise_ratio).all()
    new = replay(model, traj, rl_cfg)
    m = traj.masks["latent"]
    assert torch.allclose(new["latent"][m], traj.old["latent"][m], atol=1e-4)


def test_the_posterior_kl_and_the_step_conditions_by_hand(tiny_data):
    from types import SimpleNamespace

    from atp.latent.objective import kl_terms, make_batch, step_conditions

    mu, logvar = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[0.0, math.log(4.0)]]])
    q_mu, q_logvar = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[[0.0, 0.0]]])
    # KL(N(1, 1) || N(0, 1)) = 0.5; KL(N(1, 1) || N(1, 4)) = 0.5 * (log 4 + 1/4 - 1); averaged over the 2 dimensions.
    expected = (0.5 + 0.5 * (math.log(4.0) + 0.25 - 1.0)) / 2
    assert kl_terms(SimpleNamespace(mu=mu, logvar=logvar, q_mu=q_mu, q_logvar=q_logvar)).item() == pytest.approx(expected)
    assert kl_terms(SimpleNamespace(mu=q_mu, logvar=q_logvar, q_mu=None, q_logvar=None)).item() == pytest.approx(
        0.5
    )  # N((1,1), I)
    model, records, _ = make(tiny_data, "atp", c=2, max_steps=3, choice=2, posterior=True)
    batch = make_batch(model, records[:2], [3, 3], "cpu")
    conditions = step_conditions(model, batch)
    embedding = model.backbone.get_input_embeddings().weight
    target = batch.layouts[0].decoder_targets[1]  # the second latent step: slots 2 and 3
    assert torch.allclose(conditions[0, 2], embedding[target].mean(0)) and torch.equal(conditions[0, 2], conditions[0, 3])
    with pytest.raises(ValueError, match="posterior"):
        LatentConfig(variant="simcot", choice=2, posterior=True)


# ---------------------------------------------------------------- CODI


def test_codi_aligns_the_token_that_predicts_the_answers_number(tiny_data):
    """Teacher `prompt + steps + "### N" EOS` and student `<eot> "### N" EOS` meet at the token before N, for every
    row of a padded batch; the alignment is zero when the student's states are the teacher's own."""
    from atp.latent.objective import distill_sums

    model, records, tok = make(tiny_data, "codi", c=1, max_steps=4, stage_steps=0)
    records = records[:6]
    for r in records:
        assert tok.decode(r.answer[r.value_start :]).strip().startswith(tok.decode(r.answer_text[r.value_start :]).strip())
        assert not any(ch.isdigit() for ch in tok.decode(r.answer[: r.value_start]))
    batch = make_batch(model, records, [4] * len(records), "cpu")
    teacher = batch.teacher
    for b, r in enumerate(records):
        number = r.answer[r.value_start]
        assert int(teacher.ids[b, teacher.position[b] + 1]) == number  # the aligned token predicts the number
        assert int(batch.suffix[b, teacher.student_position[b] + 1]) == number
        assert int(teacher.labels[b, teacher.position[b]]) == number
        assert int(teacher.labels[b, len(r.prompt) - 2]) == -100  # no loss on the question
    with torch.no_grad():
        out = model.backbone(input_ids=teacher.ids, attention_mask=teacher.mask, output_hidden_states=True)
        # Student states that equal the teacher's at the aligned token: distance 0 in every layer.
        fake = []
        for state in out.hidden_states:
            student = torch.zeros(len(records), batch.suffix.shape[1], state.shape[-1])
            student[torch.arange(len(records)), teacher.student_position] = state[torch.arange(len(records)), teacher.position]
            fake.append(student)
        sums = distill_sums(model, teacher, tuple(fake))
        assert float(sums["distill"]) == pytest.approx(0.0, abs=1e-6) and float(sums["teacher"]) > 0
        moved = distill_sums(model, teacher, tuple(f + 1.0 for f in fake))
        assert float(moved["distill"]) > 0.1


# ---------------------------------------------------------------- CoLaR


def test_colar_compresses_a_known_cot_and_predicts_a_token_of_each_next_chunk(tiny_data):
    """CoT tokens 10 11 1 12 13 1 at r = 2: chunks (10 11) (1 12) (13 1), each a latent of sum / sqrt(2); the LM head
    predicts at <bot> a token of chunk 0, at chunk j a token of chunk j + 1, <eot> after the last, then the answer."""
    import random

    from atp.latent.compress import chunks, make_compressed_batch, plan_row

    assert chunks([1, 2, 3, 4, 5, 6, 7], 3) == [[1, 2, 3], [4, 5, 6], [7]]
    model, _, _ = make(tiny_data, "colar", c=1, max_steps=8)
    rec = LatentRecord(
        index=0, prompt=[5, 6], steps=[[10, 11, 1], [12, 13, 1]], step_texts=[], answer=[7, 8, 99], answer_text=[7, 8]
    )
    row = plan_row(model, rec, 2, random.Random(0))
    assert row.prefix == [5, 6, model.latent_id, model.latent_id, model.bot_id]  # the factor asked for: 2 markers
    assert row.chunks == [[10, 11], [1, 12], [13, 1]] and row.suffix == [model.eot_id, 7, 8, 99]
    assert [t in c for t, c in zip(row.chunk_targets, row.chunks)] == [True, True, True]
    assert row.chunk_targets[-1] == model.eot_id
    batch = make_compressed_batch(model, [row], "cpu")
    P = 5
    assert batch.is_chunk[0].tolist() == [False] * P + [True] * 3 + [False] * 4
    assert batch.chunk_ids[0, P + 1].tolist() == [1, 12] and batch.chunk_weights[0, P + 2].tolist() == pytest.approx(
        [2**-0.5] * 2
    )
    assert batch.labels[0].tolist() == [-100] * (P - 1) + row.chunk_targets + [7, 8, 99, -100]
    assert batch.latent_from[0].tolist() == [P - 1, P, P + 1] and batch.latent_at[0].tolist() == [P, P + 1, P + 2]
    # The fed latents are the chunks' embeddings over sqrt(2): an all-chunk input is what compressed_loss_sums builds.
    embed = model.backbone.get_input_embeddings().weight
    expected = (embed[1] + embed[12]) / 2**0.5
    built = (embed[batch.chunk_ids[0, P + 1]] * batch.chunk_weights[0, P + 1].unsqueeze(-1)).sum(0)
    assert torch.allclose(built, expected)


def test_colar_asks_for_its_compression_and_stops_when_its_lm_head_says_eot(tiny_data):
    model, records, _ = make(tiny_data, "colar", c=1, max_steps=6, compression=5)
    prefix, _ = model.prefix([[5, 6]])
    assert prefix[0].tolist()[-6:] == [model.latent_id] * 5 + [model.bot_id]
    prompts = [r.prompt for r in records[:4]]
    free = model.generate(prompts, mode="mu")
    assert all(1 <= x["latents"] <= 6 for x in free)
    always_eot = torch.full((len(model.backbone.get_output_embeddings().weight),), -10.0)
    always_eot[model.eot_id] = 10.0
    model.logits = lambda hidden: always_eot.expand(*hidden.shape[:-1], -1)  # the LM head says <eot> everywhere
    assert [x["latents"] for x in model.generate(prompts, mode="mu")] == [1] * 4  # one latent, then <eot>
    assert [x["latents"] for x in model.generate(prompts, mode="sample", generator=torch.Generator().manual_seed(0))] == [1] * 4


def test_colar_settings_are_checked():
    from atp.config import ConfigError, job_config
    from conftest import tiny_config

    with pytest.raises(ValueError, match="head mlp"):
        LatentConfig(variant="colar", head="residual")
    colar = {"stage": "latent_sft", "variant": "colar", "init": "cot_sft"}
    alias = {"stage": "latent_sft", "variant": "colar", "evaluates": "colar", "latent": {"compression": 5}}
    methods = {"cot_sft": {"stage": "sft"}, "colar": colar, "colar_5": alias}
    cfg = tiny_config(methods=methods)
    # The second row's evaluation reads the factor it asks for; its training job is never built.
    assert job_config(cfg, "eval_colar_5")["latent"] == {"compression": 5}
    assert job_config(cfg, "eval_colar")["latent"] == {"compression": 2}
    bad = [
        ({**alias, "evaluates": "nothing"}, "is not a method that trains"),
        ({**alias, "variant": "coconut", "latent": {}}, "needs the stage and variant"),
        ({**alias, "init": "cot_sft"}, "needs the stage and variant"),
        ({**alias, "seeds": [0, 1]}, "is not trained with every seed"),
    ]
    for spec, message in bad:
        with pytest.raises(ConfigError, match=f"methods.colar_5.evaluates.*{message}"):
            tiny_config(methods={**methods, "colar_5": spec})
