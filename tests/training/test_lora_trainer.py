"""The LoRA trainer: it learns, checkpoints, resumes to the same weights, and its adapter loads for evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.utils import get_peft_model_state_dict

from bench.config import LoRAConfig, ModelConfig, TrainConfig
from bench.models.embedded import build_tiny_llama
from bench.models.hf import HFChatModel
from bench.training.kd import aligned_sequence, answer_ids
from bench.training.lora_trainer import LoRATrainer, TrainItem

LORA = LoRAConfig(r=4, alpha=8, dropout=0.0)


def items(tokenizer, n: int = 4) -> list[TrainItem]:
    return [TrainItem(f"ex{i}", aligned_sequence(tokenizer, f"What is {i} + {i}?", answer_ids(
        tokenizer, f"{i} + {i} = {2 * i}. The answer is {2 * i}."), 128)) for i in range(n)]


def trainer(train: TrainConfig) -> tuple[LoRATrainer, object]:
    model, tokenizer = build_tiny_llama(seed=0)
    return LoRATrainer(model, LORA, train, temperature=2.0, alpha=1.0, pad_token_id=tokenizer.pad_token_id,
                       progress=False), tokenizer


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    train = TrainConfig(optimizer="adamw", lr=1e-2, epochs=8, batch_size=2, save_every=1000)
    lora_trainer, tokenizer = trainer(train)
    report = lora_trainer.train(items(tokenizer), None, tmp_path)
    assert report.steps == 16 and len(report.losses) == 16
    assert report.losses[-1]["loss"] < 0.7 * report.losses[0]["loss"]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_resume_from_checkpoint_reaches_the_same_weights(tmp_path: Path) -> None:
    train = TrainConfig(optimizer="sgd", lr=0.05, epochs=2, batch_size=1, save_every=3)
    straight, tokenizer = trainer(train)
    straight.train(items(tokenizer), None, tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_step_5(row: dict) -> None:
        if row["step"] == 5:
            raise Killed

    interrupted, _ = trainer(train)
    with pytest.raises(Killed):
        interrupted.train(items(tokenizer), None, tmp_path / "resumed", on_log=kill_at_step_5)
    assert (tmp_path / "resumed" / "checkpoint" / "state.pt").exists()
    resumed, _ = trainer(train)
    report = resumed.train(items(tokenizer), None, tmp_path / "resumed")
    assert report.resumed_from_step == 3 and len(report.losses) == 5  # steps 4..8 of 8
    expected = get_peft_model_state_dict(straight.model)
    actual = get_peft_model_state_dict(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(expected[key], actual[key], atol=1e-6), key


def test_adapter_loads_for_evaluation(tmp_path: Path) -> None:
    train = TrainConfig(optimizer="adamw", lr=5e-2, epochs=2, batch_size=2, save_every=1000)
    lora_trainer, tokenizer = trainer(train)
    report = lora_trainer.train(items(tokenizer), None, tmp_path)
    config = ModelConfig(name="tiny", backend="hf", model_id="embedded:tiny-llama", tiny=True)
    base = HFChatModel.from_config(config)
    tuned = HFChatModel.from_config(ModelConfig(**{**config.__dict__, "adapter_path": report.adapter_dir}))
    assert "+lora:" in tuned.model_id and tuned.model_id != base.model_id
    from bench.models.base import GenerationRequest, SamplingParams

    request = [GenerationRequest.chat(None, "What is 1 + 1?", SamplingParams(max_new_tokens=8))]
    assert tuned.generate(request, progress=False)[0].text != base.generate(request, progress=False)[0].text
