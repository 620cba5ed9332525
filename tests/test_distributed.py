"""Training on 2 CPU processes (torchrun, gloo) follows the 1-process loss curve at the same effective batch."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import PYTHON, ROOT, stage_argv, tiny_config, write_data_dir

pytestmark = pytest.mark.slow
# The two runs sum the same per-token losses in a different order (per process, then all-reduced): float32
# rounding only, so the curves agree to about 1e-6; 1e-4 relative leaves room and still catches a wrong
# normalisation (a 2x error) or a process training on the wrong rows.
RTOL = 1e-4


def curve(out_dir) -> dict[int, float]:
    """The logged loss by step."""
    return {r["step"]: r["train/loss"] for r in map(json.loads, (out_dir / "history.jsonl").read_text().splitlines())}


def run_stage(stage, job, data, out, processes, extra=()):
    launcher = (
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 else [PYTHON]
    )
    launch([*launcher, "-m", f"atp.stages.{stage}", *stage_argv(job, stage_method[stage], data, out, "--threads", "1", *extra)])


def launch(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a stage's command line on one thread per process; by default its failure fails the test with its stderr."""
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


stage_method = {"sft": "cot_sft", "latent_sft": "coconut", "rl": "atp_rl"}


def test_two_processes_follow_the_one_process_curve(tiny_data, tmp_path):
    from atp import config

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok, names=("train",))
    job = tmp_path / "job.yaml"
    config.dump(
        tiny_config(
            train={"steps": 8, "batch_size": 8, "log_every": 2, "val_samples": 0},
            latent={
                "c": 1,
                "max_steps": 2,
                "stage_steps": 3,
                "decoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
            },
            methods={"cot_sft": {"stage": "sft", "format": "cot"}, "coconut": {"stage": "latent_sft", "variant": "coconut"}},
        ),
        job,
    )
    for processes in (1, 2):
        run_stage("sft", job, data, tmp_path / f"sft{processes}", processes)
    one, two = curve(tmp_path / "sft1"), curve(tmp_path / "sft2")
    assert list(one) == list(two) == [2, 4, 6, 8]
    assert two == pytest.approx(one, rel=RTOL)
    # The latent stage (Coconut: no sampled latents, so the curves are comparable step by step) from that model.
    init = ["--init", str(tmp_path / "sft1" / "model")]
    for processes in (1, 2):
        run_stage("latent_sft", job, data, tmp_path / f"latent{processes}", processes, init)
    one, two = curve(tmp_path / "latent1"), curve(tmp_path / "latent2")
    assert list(one) == list(two) == [2, 4, 6, 8]
    assert two == pytest.approx(one, rel=RTOL)


# ---------------------------------------------------------------- RL on 2 processes

# Two PPO updates (epochs=2, each over all 16 rows) of a fixed set of trajectories: each of 2 processes
# replays half of the rows and the gradients are summed over processes. Only the summation order differs
# from one process (per process, then all-reduced; and each process pads its own 8 rows), so the
# parameters agree to float32 rounding: measured max |difference| 1.192e-07 against updates of up to
# 2.929e-02. 1e-6 absolute still catches a wrong normalisation (each process dividing by its own action
# count doubles the step) or a missing gradient sum (halves it). Plain SGD, not AdamW: AdamW's first step
# is about lr * sign(gradient), which turns rounding in near-zero gradient entries into visible
# differences (measured 2.58e-05 with lr 1e-3 for one entry) without saying anything about the sync.
RL_ATOL = 1e-6
RL_LR = 0.1

RL_UPDATE_SCRIPT = r"""
import sys
import torch
from atp import modeling
from atp.latent import LatentConfig, LatentReasoner
from atp.rl import RLConfig, group_advantages, ppo_update, rollout
from atp.runtime import compute_init, seed_everything
from atp.rl import freeze_decoder
from atp.modeling import load_tokenizer
from safetensors.torch import save_file

data, out = sys.argv[1], sys.argv[2]
dist = compute_init(1)
tok = load_tokenizer(data + "/tokenizer")
seed_everything(0)
backbone = modeling.build_model({"pretrained": None, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
                                 "max_position_embeddings": 256, "tie_word_embeddings": True}, tok)
decoder = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
model = freeze_decoder(LatentReasoner(backbone, LatentConfig(variant="atp", c=2, max_steps=3, decoder=decoder), tok)).eval()
import json
questions = [json.loads(line)["question"] for line in open(data + "/train.jsonl")][:4]
prompts = [modeling.prompt_ids(tok, q) for q in questions for _ in range(4)]
cfg = RLConfig(questions=4, group_size=4, minibatch_size=16, epochs=2, max_answer_tokens=6, kl_coef=0.0)
# The same 16 trajectories on every process (same weights, same generator); each process keeps its half.
traj = rollout(model, prompts, cfg, torch.Generator().manual_seed(3))
advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 3.0, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 2.0]), 4)
share = 16 // dist.world_size
mine = list(range(dist.rank * share, (dist.rank + 1) * share))
trainable = [p for p in model.parameters() if p.requires_grad]
if dist.is_main:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, out + "/before.safetensors")
optimizer = torch.optim.SGD(trainable, lr=float(sys.argv[3]))
stats = ppo_update(model, optimizer, trainable, traj.rows(mine), advantages[mine], cfg, torch.Generator().manual_seed(dist.rank),
                   1.0, None, dist.world_size)
if dist.is_main:
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, out + "/params.safetensors")
    json.dump(stats, open(out + "/stats.json", "w"))
"""


def test_one_rl_update_on_two_processes_equals_the_one_process_update(tiny_data, tmp_path):
    """Two global minibatches (epochs=2) of all 16 rows, 8 per process: the same parameters and statistics as on one process."""
    from safetensors.torch import load_file

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok, names=("train",))
    script = tmp_path / "update.py"
    script.write_text(RL_UPDATE_SCRIPT)
    for processes in (1, 2):
        out = tmp_path / f"update{processes}"
        out.mkdir()
        launcher = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if processes > 1 else [PYTHON]
        result = subprocess.run(
            [*launcher, str(script), str(data), str(out), str(RL_LR)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-4000:]
    one, two = (load_file(tmp_path / f"update{n}" / "params.safetensors") for n in (1, 2))
    before = load_file(tmp_path / "update1" / "before.safetensors")
    assert one.keys() == two.keys()
    moved = max(float((one[k] - before[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"max |parameter difference| 1 vs 2 processes: {diff:.3e}; largest change by the update {moved:.3e}")
    assert diff <= RL_ATOL and moved > 100 * RL_ATOL
    s1, s2 = (json.loads((tmp_path / f"update{n}" / "stats.json").read_text()) for n in (1, 2))
    for key in ("loss", "clip_fraction", "grad_norm"):
        assert s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-6), key


def test_the_rl_stage_runs_on_two_processes_and_process_0_alone_writes(tiny_data, tmp_path):
    """`python -m atp.stages.rl` under torchrun with 2 processes: each rolls out one of the 2 questions' groups;
    one model, one metrics.json, one line per step in history.jsonl and the trajectories of both processes."""
    from atp import config, modeling
    from atp.latent import LatentConfig, LatentReasoner, save_latent
    from atp.runtime import seed_everything

    cfg, splits, tok = tiny_data
    data = write_data_dir(tmp_path / "data", splits, tok)
    seed_everything(0)
    decoder = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    model = LatentReasoner(
        modeling.build_model(cfg["model"], tok), LatentConfig(variant="atp", c=2, max_steps=3, decoder=decoder), tok
    )
    save_latent(model, tok, tmp_path / "atp", {"step": 0})
    job = tmp_path / "job.yaml"
    config.dump(
        tiny_config(
            train={"steps": 2, "checkpoint_every": 1, "val_samples": 2, "lr": 1e-3},
            rl={
                "questions": 2,
                "group_size": 4,
                "minibatch_size": 4,
                "max_answer_tokens": 4,
                "trajectories_every": 1,
                "trajectories_logged": 16,
            },
            methods={"atp_rl": {"stage": "rl"}},
        ),
        job,
    )
    out = tmp_path / "rl2"
    run_stage("rl", job, data, out, 2, ["--init", str(tmp_path / "atp")])
    assert (out / "model" / "latent.json").exists() and (out / "model" / "latent_heads.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["train/accuracy"] <= 1.0 and "val/accuracy" in metrics
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]  # one writer: no line twice
    for step in (1, 2):
        rows = [json.loads(line) for line in (out / "trajectories" / f"step_{step:06d}.jsonl").read_text().splitlines()]
        assert sorted(r["question_row"] for r in rows) == list(range(8))  # both processes' 4 rollouts, once each
    assert not (tmp_path / "rl2_ckpt").exists()  # process 0 dropped the checkpoints once the outputs were written


# ---------------------------------------------------------------- FSDP (the SFT stages)

# `accelerate launch --config_file workflow/accelerate/fsdp.yaml` starts 2 gloo processes on this CPU machine
# (ACCELERATE_USE_FSDP=true): the loop trains a copy of the model sharded per decoder layer (atp/sharding.py).
FSDP_LAUNCH = [
    PYTHON,
    "-m",
    "accelerate.commands.launch",
    "--config_file",
    str(ROOT / "workflow" / "accelerate" / "fsdp.yaml"),
    "--num_processes",
    "2",
]
# FSDP reduce-scatters (averages) each gradient shard where DDP all-reduces whole gradients: only the
# summation order differs from one process, so, as for DDP, the curves agree to float32 rounding (the history
# holds losses rounded to 6 decimals; measured max relative difference 0, in micro-batches of 2 as below;
# 2.011e-07 for CoT-SFT without micro-batches) and RTOL applies. The saved weights after 8 AdamW steps
# (lr 1e-3) agree to rounding as well: measured max |difference| 4.098e-08 (CoT-SFT) and 1.192e-07 (Coconut);
# 1e-5 leaves room for other summation orders and still fails on a wrong gradient average or a process
# training on the wrong rows (whole steps of lr).
FSDP_ATOL = 1e-5
fsdp_method = {"sft": "cot_sft", "latent_sft": "coconut", "rl": "atp_rl", "atp": "atp"}


def run_fsdp(stage, job, data, out, extra=(), method=None, script=None, check=True):
    """One stage on 2 processes through accelerate's FSDP launch (or 1 process with FSDP_LAUNCH=None)."""
    target = [str(script)] if script else ["-m", f"atp.stages.{stage}"]
    argv = stage_argv(job, method or fsdp_method[stage], data, out, "--threads", "1", *extra)
    return launch([*FSDP_LAUNCH, *target, *argv], check)


def saved_weights(model_dir):
    """Every tensor the stage saved (backbone; for a latent model also the step decoder and the heads), by file and name."""
    from safetensors.torch import load_file

    return {
        f"{f.relative_to(model_dir)}:{k}": v for f in sorted(model_dir.rglob("*.safetensors")) for k, v in load_file(f).items()
    }


def compare_weights(one, two) -> float:
    a, b = saved_weights(one), saved_weights(two)
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def max_rel(one: dict, two: dict) -> float:
    return max(abs(two[s] - one[s]) / abs(one[s]) for s in one)


def assert_same_run(reference, other, what: str, steps: list[int]) -> None:
    """`other` logged the loss curve of `reference` (rel RTOL) at `steps` and saved its weights (abs FSDP_ATOL)."""
    one, two = curve(reference), curve(other)
    diff = compare_weights(reference / "model", other / "model")
    print(f"{what}: loss max relative difference {max_rel(one, two):.3e}, saved weights max |difference| {diff:.3e}")
    assert list(one) == list(two) == steps
    assert two == pytest.approx(one, rel=RTOL)
    assert diff <= FSDP_ATOL


@pytest.fixture(scope="module")
def fsdp_job(tiny_data, tmp_path_factory):
    """(job config, data dir, the 1-process CoT-SFT run) shared by the FSDP tests."""
    from atp import config

    cfg, splits, tok = tiny_data
    tmp = tmp_path_factory.mktemp("fsdp")
    data = write_data_dir(tmp / "data", splits, tok, names=("train",))
    job = tmp / "job.yaml"
    config.dump(
        tiny_config(
            # micro-batches of 2: 1 process accumulates 4 of them per step, each FSDP process 2 (a reduce-scatter each).
            train={
                "steps": 8,
                "batch_size": 8,
                "micro_batch_size": 2,
                "log_every": 2,
                "checkpoint_every": 4,
                "keep_checkpoints": 2,
                "val_samples": 0,
            },
            latent={
                "c": 1,
                "max_steps": 2,
                "stage_steps": 3,
                "decoder": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
            },
            methods={
                "cot_sft": {"stage": "sft", "format": "cot"},
                "coconut": {"stage": "latent_sft", "variant": "coconut"},
                "atp": {"stage": "latent_sft", "variant": "atp"},
                "atp_rl": {"stage": "rl"},
            },
        ),
        job,
    )
    run_stage("sft", job, data, tmp / "sft1", 1)
    return job, data, tmp


def test_fsdp_cot_sft_follows_the_one_process_curve(fsdp_job):
    job, data, tmp = fsdp_job
    run_fsdp("sft", job, data, tmp / "sft_fsdp")
    assert_same_run(tmp / "sft1", tmp / "sft_fsdp", "CoT-SFT, FSDP on 2 vs 1 process", [2, 4, 6, 8])
    assert not (tmp / "sft_fsdp_ckpt").exists()  # process 0 dropped the checkpoints once the outputs were written


def test_fsdp_latent_sft_follows_the_one_process_curve(fsdp_job):
    """Coconut (no sampled latents): the latent loop calls each backbone layer once per slot and once for the suffix."""
    job, data, tmp = fsdp_job
    init = ["--init", str(tmp / "sft1" / "model")]
    run_stage("latent_sft", job, data, tmp / "latent1", 1, init)
    run_fsdp("latent_sft", job, data, tmp / "latent_fsdp", init)
    assert_same_run(tmp / "latent1", tmp / "latent_fsdp", "Coconut latent SFT, FSDP on 2 vs 1 process", [2, 4, 6, 8])


def test_fsdp_equals_ddp_for_atp_latent_with_lora_and_gradient_checkpointing(fsdp_job):
    """ATP-Latent (sampled latents: the noise depends on the process, so the reference is DDP on 2 processes, not
    1 process) on a LoRA-wrapped backbone with train.gradient_checkpointing: the adapters (frozen weights in the
    same FSDP units), the step decoder's sharded layer and the checkpointed layers' recomputation under FSDP.
    Measured: identical curves (6 decimals), saved weights max |difference| 1.490e-08."""
    from atp import config

    job, data, tmp = fsdp_job
    raw = config.load(job)
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    config.dump(
        {**raw, "model": {**raw["model"], "lora": lora}, "train": {**raw["train"], "steps": 6, "gradient_checkpointing": True}},
        tmp / "lora.yaml",
    )
    init = ["--init", str(tmp / "sft1" / "model")]
    stage_method["latent_sft"] = "atp"
    try:
        run_stage("latent_sft", tmp / "lora.yaml", data, tmp / "lora_ddp", 2, init)
    finally:
        stage_method["latent_sft"] = "coconut"
    run_fsdp("latent_sft", tmp / "lora.yaml", data, tmp / "lora_fsdp", init, method="atp")
    assert_same_run(tmp / "lora_ddp", tmp / "lora_fsdp", "ATP-Latent, LoRA, gradient checkpointing, FSDP vs DDP", [2, 4, 6])


# A stage run that SIGKILLs process 0 right after it wrote the checkpoint of step 4 (of 8); the launcher then
# ends the other process. Deterministic where a kill from outside would race the tiny model's training.
KILLED_SCRIPT = r"""
import os, runpy, signal, sys
import atp.checkpoints
save = atp.checkpoints.save_checkpoint

def save_then_die(ckpt_dir, step, *args, **kwargs):
    path = save(ckpt_dir, step, *args, **kwargs)
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

atp.checkpoints.save_checkpoint = save_then_die
sys.argv[0] = "atp.stages.latent_sft"
runpy.run_module("atp.stages.latent_sft", run_name="__main__")
"""


def test_an_interrupted_fsdp_run_resumes_to_the_uninterrupted_weights(fsdp_job):
    """ATP-Latent (sampled latents, step decoder, stop head) under FSDP, killed after the step-4 checkpoint and
    resumed: bit-identical weights and history to the uninterrupted FSDP run (the checkpoint holds the full weights
    and optimizer state, resharded identically on resume; each step reseeds from (seed, step, rank))."""
    job, data, tmp = fsdp_job
    init = ["--init", str(tmp / "sft1" / "model")]
    script = tmp / "killed.py"
    script.write_text(KILLED_SCRIPT)
    run_fsdp("latent_sft", job, data, tmp / "atp_full", init, method="atp")
    killed = run_fsdp("latent_sft", job, data, tmp / "atp_resumed", init, method="atp", script=script, check=False)
    assert killed.returncode != 0
    saved = tmp / "atp_resumed_ckpt" / "step_0000004"
    assert (saved / "meta.json").exists() and json.loads((saved / "meta.json").read_text())["strategy"] == "fsdp"
    assert not (tmp / "atp_resumed" / "model").exists()
    run_fsdp("latent_sft", job, data, tmp / "atp_resumed", init, method="atp")
    assert compare_weights(tmp / "atp_full" / "model", tmp / "atp_resumed" / "model") == 0.0
    assert (tmp / "atp_resumed" / "history.jsonl").read_text() == (tmp / "atp_full" / "history.jsonl").read_text()


def test_the_rl_stage_refuses_fsdp(fsdp_job):
    job, data, tmp = fsdp_job
    result = run_fsdp("rl", job, data, tmp / "rl_fsdp", ["--init", str(tmp / "sft1" / "model")], check=False)
    assert result.returncode != 0
    assert "the rl stage runs data-parallel (DDP) only" in result.stderr and "workflow/accelerate/ddp.yaml" in result.stderr
    assert not (tmp / "rl_fsdp").exists()
