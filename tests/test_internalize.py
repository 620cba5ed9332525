"""iCoT (stepwise internalization): the removal schedule on a hand-built example, its smoothing offsets, the loss
over micro-batches, the config rules, and a short training run whose targets lose their CoT."""

import math

import pytest
import torch

from atp import modeling
from atp.batches import IGNORE
from atp.config import ConfigError, TrainConfig, to_dataclass
from atp.internalize import CoTExample, InternalizeObjective, RemovalSchedule
from atp.runtime import Dist, seed_everything
from atp.stages.sft import encode_examples, objective
from atp.train import train
from conftest import Recorder, tiny_config

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
EXAMPLE = CoTExample(index=0, prompt=[1, 2], cot=[10, 11, 12, 13, 14], answer=[20, 21, 99])


def test_the_schedule_removes_the_cot_from_its_front_a_token_every_few_steps():
    schedule = RemovalSchedule(every=10, smoothing=None)
    full = schedule.shortened(0, EXAMPLE)
    assert full.input_ids == [1, 2, 10, 11, 12, 13, 14, 20, 21, 99]
    assert full.labels == [IGNORE, IGNORE, 10, 11, 12, 13, 14, 20, 21, 99]
    assert schedule.shortened(9, EXAMPLE).input_ids == full.input_ids
    assert schedule.shortened(25, EXAMPLE).input_ids == [1, 2, 12, 13, 14, 20, 21, 99]
    # Once the schedule passes the CoT, the answer line alone is left (the No-CoT format) and stays.
    assert schedule.fully_removed_at(len(EXAMPLE.cot)) == 50
    for step in (50, 51, 500):
        shortened = schedule.shortened(step, EXAMPLE)
        assert shortened.input_ids == [1, 2, 20, 21, 99]
        assert shortened.labels == [IGNORE, IGNORE, 20, 21, 99]


def test_the_smoothing_offset_is_geometric_and_reproducible():
    schedule = RemovalSchedule(every=10, smoothing=1.0, seed=3)
    offsets = [schedule.offset(7, i) for i in range(4000)]
    assert offsets == [schedule.offset(7, i) for i in range(4000)]  # a pure function of (seed, step, example)
    assert offsets != [RemovalSchedule(10, 1.0, seed=4).offset(7, i) for i in range(4000)]
    # P(o = 0) = 1 - e^-lambda, P(o = 1) = (1 - e^-lambda) e^-lambda.
    assert offsets.count(0) / 4000 == pytest.approx(1 - math.exp(-1), abs=0.03)
    assert offsets.count(1) / 4000 == pytest.approx((1 - math.exp(-1)) * math.exp(-1), abs=0.03)
    assert all(RemovalSchedule(10, None).offset(7, i) == 0 for i in range(100))
    # The offset never removes more than the CoT, and never the answer.
    wide = RemovalSchedule(every=10, smoothing=0.01)
    assert all(wide.shortened(s, EXAMPLE).input_ids[-3:] == [20, 21, 99] for s in range(0, 60, 7))


def test_the_loss_is_the_same_however_the_batch_is_split(tiny_data):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    model = modeling.build_model(cfg["model"], tok)
    items, _ = encode_examples(splits["train"][:8], tok, "icot", 256)
    goal = InternalizeObjective(tok.pad_token_id, RemovalSchedule(every=2, smoothing=4.0))
    totals = goal.totals(items, 9)
    whole, parts = goal.loss(model, items, totals, 9, "cpu")
    halves = [goal.loss(model, items[i : i + 4], totals, 9, "cpu") for i in (0, 4)]
    assert sum(h[0].item() for h in halves) == pytest.approx(whole.item(), rel=1e-5)
    removed = sum(float(h[1]["removed"]) for h in halves)
    assert removed == pytest.approx(float(parts["removed"])) and 0 < removed < 1


def test_icot_examples_keep_the_cot_and_the_answer_apart(tiny_data):
    _, splits, tok = tiny_data
    (icot,), _ = encode_examples(splits["train"][:1], tok, "icot", 256)
    (cot,), _ = encode_examples(splits["train"][:1], tok, "cot", 256)
    (nocot,), _ = encode_examples(splits["train"][:1], tok, "nocot", 256)
    assert icot.input_ids == cot.input_ids
    assert icot.prompt + icot.answer == nocot.input_ids
    assert tok.decode(icot.cot).startswith("<<")


def test_a_short_icot_run_ends_on_answer_only_targets(tiny_data, tmp_path):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    model = modeling.build_model(cfg["model"], tok)
    items, _ = encode_examples(splits["train"], tok, "icot", 256)
    train_cfg = to_dataclass(TrainConfig, {**cfg["train"], "steps": 12, "log_every": 4}, "train")
    goal = objective({"format": "icot", "removal": {"every": 1, "smoothing": 4.0}}, tok.pad_token_id, 0)
    recorder = Recorder()
    train(model, items, train_cfg, CPU, 0, tmp_path / "ckpt", goal, recorder, {})
    removed = [m["train/removed"] for _, m in recorder.logged if "train/removed" in m]
    assert removed[0] < removed[-1] <= 1
    assert all(math.isfinite(m["train/loss"]) for _, m in recorder.logged if "train/loss" in m)


@pytest.mark.parametrize(
    "method, key",
    [
        ({"stage": "sft", "format": "icot", "init": "cot_sft"}, "methods.icot.removal"),
        ({"stage": "sft", "format": "cot", "removal": {"every": 5}}, "methods.icot.removal"),
        ({"stage": "sft", "format": "icot", "removal": {"every": 0}}, "methods.icot.removal.every"),
        ({"stage": "sft", "format": "icot", "removal": {"every": 5, "smooth": 4}}, "methods.icot.removal.smooth"),
        ({"stage": "latent_sft", "variant": "coconut", "format": "icot", "removal": {"every": 5}}, "methods.icot.format"),
    ],
)
def test_icot_settings_fail_naming_the_key(method, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny_config(methods={"cot_sft": {"stage": "sft"}, "icot": method})
