"""Tokenizer and backbone: the built miniature and the pretrained-model path (offline, tiny)."""

import pytest
import torch

from atp import modeling
from atp.text import BOT, EOT, LATENT, cot_target, prompt_text


def test_built_tokenizer_round_trips_and_splits_digits(tiny_data):
    _, splits, tok = tiny_data
    record = splits["train"][0]
    text = prompt_text(record["question"]) + cot_target(record["steps"], record["answer"])
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(tok.encode("<<123+45=168>>", add_special_tokens=False))
    assert [p.lstrip("▁") for p in pieces if p.lstrip("▁").isdigit()] == list("12345168")
    for special in (BOT, LATENT, EOT, tok.eos_token, tok.pad_token):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    unseen = "Zorblax owns 5 hats."
    assert tok.decode(tok.encode(unseen, add_special_tokens=False)) == unseen


def test_built_model_has_config_sizes(tiny_data):
    cfg, _, tok = tiny_data
    model = modeling.build_model(cfg["model"], tok)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def _save_tiny_pretrained(folder):
    """A tiny random Llama and a tokenizer without the pipeline's latent markers or a pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(
        ["<<3*4=12>> Tom has 3 bags", "### 12"],
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False),
    )
    base = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>")
    base.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(base),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return len(base)


def test_pretrained_path_adds_specials_and_inits_them_from_chevrons(tmp_path):
    folder = tmp_path / "pretrained"
    n_before = _save_tiny_pretrained(folder)
    tokenizer = modeling.pretrained_tokenizer(str(folder))
    assert len(tokenizer) == n_before + 4  # three latent markers and a pad token
    for special in (BOT, LATENT, EOT, tokenizer.pad_token):
        assert len(tokenizer.encode(special, add_special_tokens=False)) == 1
    model = modeling.build_model({"pretrained": str(folder)}, tokenizer)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer)
    expected = weight[tokenizer.encode("<<", add_special_tokens=False)].mean(dim=0)
    assert torch.allclose(weight[n_before:], expected.expand(4, -1))
    assert not torch.allclose(weight[:n_before].mean(dim=0), expected)


def test_lora_on_and_off(tiny_data):
    cfg, _, tok = tiny_data
    model = modeling.build_model(cfg["model"], tok)
    same = modeling.apply_lora(model, {**cfg["model"]["lora"], "enabled": False})
    assert same is model
    lora = modeling.apply_lora(modeling.build_model(cfg["model"], tok), {**cfg["model"]["lora"], "enabled": True, "r": 2})
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_save_and_load_model_merges_lora(tmp_path, tiny_data):
    cfg, _, tok = tiny_data
    lora = modeling.apply_lora(modeling.build_model(cfg["model"], tok), {**cfg["model"]["lora"], "enabled": True, "r": 2})
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    x = torch.tensor([[1, 2, 3]])
    expected = lora(input_ids=x).logits
    modeling.save_model(lora, tok, tmp_path / "m", {"note": "test"})
    assert (tmp_path / "m" / "model.safetensors").exists() and (tmp_path / "m" / "meta.json").exists()
    loaded, tok2 = modeling.load_model(tmp_path / "m")
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    assert torch.allclose(loaded(input_ids=x).logits, expected, atol=1e-5)
    assert len(tok2) == len(tok)


@pytest.mark.parametrize("lora, copy_decoder", [(False, False), (True, False), (True, True)])
def test_the_training_stages_run_on_a_pretrained_model_with_and_without_lora(tiny_data, tmp_path, lora, copy_decoder):
    """The pretrained path through the stage CLIs (offline, a tiny saved Llama): CoT-SFT, the latent stage, RL;
    with the small step decoder and with the paper's (a copy of the backbone, `latent.decoder.copy_backbone`)."""
    from safetensors.torch import load_file

    from atp import cli, config
    from atp.data.records import write_jsonl
    from atp.latent import load_latent
    from atp.stages import latent_sft, rl, sft
    from conftest import tiny_config

    _, splits, _ = tiny_data
    folder = tmp_path / "pretrained"
    n_before = _save_tiny_pretrained(folder)
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", splits["train"][:40])
    modeling.pretrained_tokenizer(str(folder)).save_pretrained(data / "tokenizer")
    job = tmp_path / "job.yaml"
    lora_cfg = {"enabled": lora, "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    config.dump(
        tiny_config(
            model={"pretrained": str(folder), "lora": lora_cfg},
            train={"steps": 2, "batch_size": 4, "val_samples": 0, "max_length": 1024},
            latent={
                "c": 1,
                "max_steps": 2,
                "stage_steps": 1,
                "decoder": {
                    "hidden_size": 16,
                    "num_layers": 1,
                    "num_heads": 2,
                    "intermediate_size": 32,
                    "copy_backbone": copy_decoder,
                },
            },
            rl={"questions": 2, "group_size": 2, "minibatch_size": 2, "max_answer_tokens": 3},
            methods={
                "cot_sft": {"stage": "sft", "format": "cot"},
                "atp": {"stage": "latent_sft", "variant": "atp"},
                "atp_rl": {"stage": "rl"},
            },
        ),
        job,
    )
    common = ["--config", str(job), "--data-dir", str(data), "--no-tracking"]
    cli.run(sft.main, cli.training_parser("sft"), common + ["--method", "cot_sft", "--out-dir", str(tmp_path / "cot")])
    cli.run(
        latent_sft.main,
        cli.training_parser("latent"),
        common + ["--method", "atp", "--out-dir", str(tmp_path / "atp"), "--init", str(tmp_path / "cot" / "model")],
    )
    cli.run(
        rl.main,
        cli.training_parser("rl"),
        common + ["--method", "atp_rl", "--out-dir", str(tmp_path / "rl"), "--init", str(tmp_path / "atp" / "model")],
    )
    for stage in ("cot", "atp", "rl"):
        weights = load_file(tmp_path / stage / "model" / "model.safetensors")
        assert not any("lora_" in k for k in weights), stage  # adapters merged on save
    model, tokenizer = load_latent(tmp_path / "rl" / "model")
    assert len(tokenizer) == n_before + 4 and model.backbone.get_input_embeddings().weight.shape[0] == len(tokenizer)
    if copy_decoder:  # the copy has the backbone's shapes (vocabulary with the markers), and RL left it as SFT did
        sft_decoder = load_file(tmp_path / "atp" / "model" / "decoder" / "model.safetensors")
        assert model.decoder.config.hidden_size == model.backbone.config.hidden_size
        rl_decoder = load_file(tmp_path / "rl" / "model" / "decoder" / "model.safetensors")
        assert all(torch.equal(v, sft_decoder[k]) for k, v in rl_decoder.items())
        assert model.decoder.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert (
        model.generate([modeling.prompt_ids(tokenizer, splits["val"][0]["question"])], mode="mu", max_answer_tokens=3)[0][
            "latents"
        ]
        <= 2
    )
