"""The SFT trainer: parameters change, the loss is finite and falls, resume is exact, NaN stops it."""

import math

import pytest
import torch

from atp import modeling
from atp.batches import IGNORE, TokenObjective, batch_schedule
from atp.checkpoints import checkpoints
from atp.config import TrainConfig, to_dataclass
from atp.runtime import Dist, NonFiniteLoss, seed_everything
from atp.stages.sft import encode_examples
from atp.train import lr_factor, train
from conftest import Recorder

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _setup(tiny_data, fmt="cot", **train_overrides):
    cfg, splits, tok = tiny_data
    seed_everything(0)
    model = modeling.build_model(cfg["model"], tok)
    examples, _ = encode_examples(splits["train"], tok, fmt, 256)
    train_cfg = to_dataclass(TrainConfig, {**cfg["train"], **train_overrides}, "train")
    return model, examples, train_cfg, tok


def test_encode_masks_the_prompt(tiny_data):
    _, splits, tok = tiny_data
    (cot,), _ = encode_examples(splits["train"][:1], tok, "cot", 256)
    (nocot,), _ = encode_examples(splits["train"][:1], tok, "nocot", 256)
    prompt_len = cot.labels.count(IGNORE)
    assert cot.labels[:prompt_len] == [IGNORE] * prompt_len
    assert cot.input_ids[prompt_len:] == cot.labels[prompt_len:]
    assert cot.input_ids[-1] == tok.eos_token_id == nocot.input_ids[-1]
    assert tok.decode(nocot.labels[prompt_len:-1]).startswith("###")
    assert len(cot.input_ids) > len(nocot.input_ids)
    _, dropped = encode_examples(splits["train"], tok, "cot", 20)
    assert dropped > 0


@pytest.mark.parametrize("fmt", ["cot", "nocot"])
def test_training_changes_parameters_and_lowers_a_finite_loss(tiny_data, tmp_path, fmt):
    model, examples, cfg, tok = _setup(tiny_data, fmt, steps=30, lr=3e-3, log_every=5, checkpoint_every=100)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recorder = Recorder()
    metrics = train(model, examples, cfg, CPU, 0, tmp_path / "ckpt", TokenObjective(tok.pad_token_id), recorder, {})
    losses = [m["train/loss"] for _, m in recorder.logged if "train/loss" in m]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    assert metrics["train/loss"] == losses[-1]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_resume_from_checkpoint_is_exact(tiny_data, tmp_path):
    """Interrupted after step 6 and resumed == uninterrupted, bit for bit on CPU."""
    model_a, examples, cfg, tok = _setup(tiny_data, steps=10, checkpoint_every=3, keep_checkpoints=2, log_every=4)
    metrics_a = train(model_a, examples, cfg, CPU, 0, tmp_path / "a", TokenObjective(tok.pad_token_id), Recorder(), {})

    model_b, _, cfg_b, _ = _setup(tiny_data, steps=10, checkpoint_every=3, keep_checkpoints=2, log_every=4)

    class Interrupt(Exception):
        pass

    def stop_after_seven(step, metrics):
        if step >= 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(
            model_b,
            examples,
            cfg_b,
            CPU,
            0,
            tmp_path / "b",
            TokenObjective(tok.pad_token_id),
            Recorder(),
            {},
            on_log=stop_after_seven,
        )
    saved = [int(p.name[5:]) for p in checkpoints(tmp_path / "b")]
    assert saved == [3, 6]  # keep_checkpoints=2
    model_c, _, _, _ = _setup(tiny_data)
    recorder = Recorder()
    metrics = train(model_c, examples, cfg_b, CPU, 0, tmp_path / "b", TokenObjective(tok.pad_token_id), recorder, {})
    assert recorder.logged[0] == (6, {"train/resumed_from_step": 6})
    # The step-8 log window was open at the step-6 checkpoint: the resumed run finishes it, so it logs
    # (and returns) the same numbers as the uninterrupted run.
    timing = ("train/steps_per_s",)
    assert {k: v for k, v in metrics.items() if k not in timing} == {k: v for k, v in metrics_a.items() if k not in timing}
    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), name


def test_a_measurement_run_writes_no_checkpoint_and_trains_the_same(tiny_data, tmp_path, monkeypatch):
    """ckpt_dir None (scripts/gpu_check.py at the paper's shapes, where a checkpoint is about 15 GB): the same
    weights as a checkpointed run, and nothing written, not even after the last step."""
    model_a, examples, cfg, tok = _setup(tiny_data, steps=4, checkpoint_every=2, log_every=2)
    train(model_a, examples, cfg, CPU, 0, tmp_path / "a", TokenObjective(tok.pad_token_id), Recorder(), {})
    assert [int(p.name[5:]) for p in checkpoints(tmp_path / "a")] == [2, 4]
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # an empty working folder: a stray relative write would land here
    before = set(tmp_path.rglob("*"))
    model_b, _, _, _ = _setup(tiny_data)
    train(model_b, examples, cfg, CPU, 0, None, TokenObjective(tok.pad_token_id), Recorder(), {})
    assert set(tmp_path.rglob("*")) == before
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_the_other_optimizer_format_is_refused(tiny_data, tmp_path):
    """FSDP checkpoints hold the optimizer state keyed by parameter name, 1-process and DDP ones torch's
    positional state dict: resuming across them would lose the optimizer state, so it is refused (the weights file is
    the same)."""
    import json

    from atp.checkpoints import resume_point
    from atp.config import ConfigError

    model, examples, cfg, tok = _setup(tiny_data, steps=3, checkpoint_every=3)
    train(model, examples, cfg, CPU, 0, tmp_path / "c", TokenObjective(tok.pad_token_id), Recorder(), {})
    (saved,) = checkpoints(tmp_path / "c")
    assert json.loads((saved / "meta.json").read_text())["strategy"] == "single"
    assert resume_point(tmp_path / "c", {}, "ddp") == saved  # 1 process and DDP: one format
    with pytest.raises(ConfigError, match="written with strategy single and this run is fsdp.*different formats.*or delete"):
        resume_point(tmp_path / "c", {}, "fsdp")
    meta = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**meta, "strategy": "fsdp"}))
    with pytest.raises(ConfigError, match="written with strategy fsdp and this run is ddp.*workflow/accelerate/fsdp.yaml"):
        resume_point(tmp_path / "c", {}, "ddp")
    assert resume_point(tmp_path / "c", {}, "fsdp") == saved


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    model, examples, cfg, tok = _setup(tiny_data, steps=8, checkpoint_every=2, log_every=1)

    def poison(step, metrics):
        if step == 5:
            with torch.no_grad():
                model.get_input_embeddings().weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match="step 6"):
        train(model, examples, cfg, CPU, 0, tmp_path / "c", TokenObjective(tok.pad_token_id), Recorder(), {}, on_log=poison)
    last = checkpoints(tmp_path / "c")[-1]
    assert last.name == "step_0000004"
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(last / "model.safetensors").values())


def test_schedule_is_deterministic_and_length_grouped():
    lengths = [i % 37 for i in range(1000)]
    a = batch_schedule(lengths, 10, 150, seed=1)
    assert a == batch_schedule(lengths, 10, 150, seed=1)
    assert a != batch_schedule(lengths, 10, 150, seed=2)
    assert len(a) == 150 and all(len(b) == 10 for b in a)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 10  # random batches would spread over ~30
    with pytest.raises(ValueError):
        batch_schedule([1, 2], 10, 5, seed=0)


def test_lr_schedule_warms_up_then_decays(tiny_data):
    cfg = to_dataclass(TrainConfig, {**tiny_data[0]["train"], "steps": 100, "warmup_ratio": 0.1, "min_lr_ratio": 0.1}, "train")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) == pytest.approx(0.1, abs=0.01)
    assert lr_factor(50, cfg) < lr_factor(20, cfg)
