"""The LoRA trainer: it learns, checkpoints, resumes to the same weights and lr schedule, optimises as published,
and its adapter loads for evaluation."""

from __future__ import annotations

import logging
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict

from bench.config import LoRAConfig, ModelConfig, TrainConfig
from bench.models.embedded import build_tiny_llama
from bench.models.hf import HFChatModel
from bench.training.kd import aligned_sequence, answer_ids, answer_logits, teacher_topk
from bench.training.lora_trainer import LoRATrainer, RNGState, TrainItem, TrainReport, collate, lora_for_arm
from bench.training.teacher_logits import TopKCache

LORA = LoRAConfig(r=4, alpha=8, dropout=0.0)


def items(tokenizer, n: int = 4) -> list[TrainItem]:
    return [TrainItem(f"ex{i}", aligned_sequence(tokenizer, f"What is {i} + {i}?", answer_ids(
        tokenizer, f"{i} + {i} = {2 * i}. The answer is {2 * i}."), 128)) for i in range(n)]


def trainer(train: TrainConfig, alpha: float = 1.0, lora: LoRAConfig = LORA, **options
            ) -> tuple[LoRATrainer, object]:
    model, tokenizer = build_tiny_llama(seed=0)
    return LoRATrainer(model, lora, train, temperature=2.0, alpha=alpha, pad_token_id=tokenizer.pad_token_id,
                       progress=False, **options), tokenizer


class Killed(Exception):
    pass


def kill_at(step: int):
    """An on_log callback that kills training right after `step`, as a crash would."""
    def callback(row: dict) -> None:
        if row["step"] == step:
            raise Killed

    return callback


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    train = TrainConfig(optimizer="adamw", lr=1e-2, epochs=8, batch_size=2, save_every=1000, scheduler="none",
                        max_grad_norm=1.0)
    lora_trainer, tokenizer = trainer(train)
    report = lora_trainer.train(items(tokenizer), None, tmp_path)
    assert report.steps == 16 and len(report.losses) == 16
    assert report.losses[-1]["loss"] < 0.7 * report.losses[0]["loss"]
    assert (tmp_path / "adapter" / "adapter_config.json").exists()


def test_resume_from_checkpoint_reaches_the_same_weights_and_lr_schedule(tmp_path: Path) -> None:
    # the published optimiser (SGD, momentum 0.9, weight decay, cosine over 4 items stepped per step), lr scaled
    train = TrainConfig(optimizer="sgd", lr=0.05, epochs=2, batch_size=1, save_every=3)
    assert (train.momentum, train.scheduler, train.scheduler_t_max) == (0.9, "cosine", None)
    straight, tokenizer = trainer(train)
    straight_report = straight.train(items(tokenizer), None, tmp_path / "straight")

    interrupted, _ = trainer(train)
    with pytest.raises(Killed):
        interrupted.train(items(tokenizer), None, tmp_path / "resumed", on_log=kill_at(5))
    assert (tmp_path / "resumed" / "checkpoint" / "state.pt").exists()
    resumed, _ = trainer(train)
    report = resumed.train(items(tokenizer), None, tmp_path / "resumed")
    assert report.resumed_from_step == 3 and len(report.losses) == 8  # steps 1..3 from the checkpoint, 4..8 trained
    # the resumed run continues on the same lr curve (down to 0 at step 5, back up in epoch 2), not restarting it
    assert [row["lr"] for row in report.losses] == pytest.approx([row["lr"] for row in straight_report.losses])
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch == 8
    expected = get_peft_model_state_dict(straight.model)
    actual = get_peft_model_state_dict(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.allclose(expected[key], actual[key], atol=1e-6), key


def max_weight_diff(a: LoRATrainer, b: LoRATrainer) -> float:
    """The largest absolute difference between two trainers' LoRA weights (0.0: bit-identical)."""
    left, right = get_peft_model_state_dict(a.model), get_peft_model_state_dict(b.model)
    assert left.keys() == right.keys()
    return max(float((left[key] - right[key]).abs().max()) for key in left)


def killed_and_resumed(train: TrainConfig, lora: LoRAConfig, folder: Path, kill_step: int,
                       edit_checkpoint: Callable[[dict], None] | None = None) -> tuple[LoRATrainer, TrainReport]:
    """Train until `kill_step` (a crash), optionally rewrite the checkpoint left behind, and resume with a new
    trainer, as a rerun of the job does."""
    first, tokenizer = trainer(train, lora=lora)
    with pytest.raises(Killed):
        first.train(items(tokenizer), None, folder, on_log=kill_at(kill_step))
    if edit_checkpoint is not None:
        state = torch.load(folder / "checkpoint" / "state.pt", weights_only=False)
        edit_checkpoint(state)
        torch.save(state, folder / "checkpoint" / "state.pt")
    resumed, _ = trainer(train, lora=lora)
    return resumed, resumed.train(items(tokenizer), None, folder)


DROPOUT = LoRAConfig(r=4, alpha=8, dropout=0.3)
# shuffled, 2 epochs of 4 items, checkpoints at steps 3 and 6: a kill at step 5 loses steps 4-5 (already logged)
SHUFFLED = TrainConfig(optimizer="adamw", lr=1e-2, epochs=2, batch_size=1, save_every=3, shuffle=True,
                       scheduler="cosine")


def test_a_resumed_run_with_lora_dropout_is_bit_identical_to_an_uninterrupted_one(tmp_path: Path) -> None:
    """Dropout draws from torch's generator every step: the resumed run must continue its stream from the checkpoint,
    not from `train.seed` (which re-draws the masks of steps 1.. for steps 4..), and report every step's row once."""
    straight, tokenizer = trainer(SHUFFLED, lora=DROPOUT)
    straight_report = straight.train(items(tokenizer), None, tmp_path / "straight")
    resumed, report = killed_and_resumed(SHUFFLED, DROPOUT, tmp_path / "resumed", kill_step=5)
    assert report.resumed_from_step == 3
    assert max_weight_diff(straight, resumed) == 0.0
    assert [row["step"] for row in report.losses] == list(range(1, 9))  # steps 4, 5 of the killed run: not twice
    assert report.losses == straight_report.losses  # the same floats, bit for bit


def test_a_checkpoint_without_rng_state_or_loss_history_resumes_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Checkpoints written before the RNG state and loss history were saved still resume (backward compatible):
    training finishes, the log says what cannot be reproduced, and the rows are those this process trained."""
    def strip(state: dict) -> None:
        state.pop("rng", None), state.pop("losses", None)

    with caplog.at_level(logging.WARNING, logger="bench.training.lora_trainer"):
        _, report = killed_and_resumed(SHUFFLED, DROPOUT, tmp_path, kill_step=5, edit_checkpoint=strip)
    assert report.resumed_from_step == 3 and report.steps == 8 and (tmp_path / "adapter").exists()
    assert [row["step"] for row in report.losses] == [4, 5, 6, 7, 8]
    assert "no RNG state" in caplog.text and "loss history" in caplog.text


def test_a_second_resume_after_an_old_checkpoint_keeps_the_rows_trained_since(tmp_path: Path) -> None:
    """A run resumed from an old checkpoint (no history) checkpoints rows 4.. only; resuming from that one again
    must accept them, not call the history corrupt for missing steps 1-3."""
    first, tokenizer = trainer(SHUFFLED, lora=DROPOUT)
    with pytest.raises(Killed):
        first.train(items(tokenizer), None, tmp_path, on_log=kill_at(5))
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    state.pop("rng", None), state.pop("losses", None)
    torch.save(state, tmp_path / "checkpoint" / "state.pt")
    second, _ = trainer(SHUFFLED, lora=DROPOUT)
    with pytest.raises(Killed):
        second.train(items(tokenizer), None, tmp_path, on_log=kill_at(7))  # after the checkpoint at step 6
    third, _ = trainer(SHUFFLED, lora=DROPOUT)
    report = third.train(items(tokenizer), None, tmp_path)
    assert report.resumed_from_step == 6 and [row["step"] for row in report.losses] == [4, 5, 6, 7, 8]


def draws() -> tuple[float, float, torch.Tensor, torch.Tensor | None]:
    """One draw from each global generator a checkpoint restores (CUDA's where there is one)."""
    cuda = torch.rand(3, device="cuda") if torch.cuda.is_available() else None
    return random.random(), float(np.random.random()), torch.rand(3), cuda


def test_rng_state_restores_every_global_generator() -> None:
    saved = RNGState.from_dict(RNGState.capture().to_dict())
    first = draws()
    saved.restore()
    again = draws()
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
    assert (first[3] is None and again[3] is None) or torch.equal(first[3], again[3])


@pytest.mark.parametrize("killed_at", ["after_first_rename", "before_old_removed", "while_writing_temp"])
def test_a_kill_inside_the_checkpoint_swap_is_recovered(tmp_path: Path, killed_at: str) -> None:
    """A kill between the swap's two renames left checkpoint.old behind, and every later save crashed with
    'Directory not empty'; the last complete checkpoint must survive any kill point."""
    train = TrainConfig(optimizer="sgd", lr=0.05, epochs=2, batch_size=1, save_every=3)
    first, tokenizer = trainer(train)
    with pytest.raises(Killed):
        first.train(items(tokenizer), None, tmp_path, on_log=kill_at(4))
    checkpoint = tmp_path / "checkpoint"
    old, temp = tmp_path / "checkpoint.old", tmp_path / "checkpoint.tmp"
    if killed_at == "after_first_rename":  # checkpoint -> checkpoint.old done, tmp -> checkpoint not yet
        checkpoint.replace(old)
        temp.mkdir()
        (temp / "state.pt").write_bytes(b"half written")
    elif killed_at == "before_old_removed":
        shutil.copytree(checkpoint, old)
    else:
        temp.mkdir()
        (temp / "state.pt").write_bytes(b"half written")
    resumed, _ = trainer(train)
    report = resumed.train(items(tokenizer), None, tmp_path)
    assert report.resumed_from_step == 3 and report.steps == 8
    assert not old.exists() and not temp.exists() and (tmp_path / "adapter").exists()


def test_cosine_schedule_is_stepped_every_step_and_climbs_back_in_epoch_two(tmp_path: Path) -> None:
    lr = 0.01
    lora_trainer, tokenizer = trainer(TrainConfig(lr=lr, epochs=2, batch_size=1, save_every=1000))
    report = lora_trainer.train(items(tokenizer), None, tmp_path)
    # T_max = 4 training items; step s (1-based) runs at lr * (1 + cos(pi * (s - 1) / 4)) / 2:
    # 1, 0.854, 0.5, 0.146 (epoch 1), 0 at step 5, then 0.146, 0.5, 0.854 (epoch 2, climbing back)
    expected = [lr * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(8)]
    assert [row["lr"] for row in report.losses] == pytest.approx(expected, abs=1e-12)


def test_scheduler_t_max_counts_optimizer_steps(tmp_path: Path) -> None:
    lr = 0.01  # batch 2 over 4 items: 2 steps an epoch; T_max = 4 steps spans both epochs
    lora_trainer, tokenizer = trainer(TrainConfig(lr=lr, epochs=2, batch_size=2, scheduler_t_max=4,
                                                  save_every=1000))
    report = lora_trainer.train(items(tokenizer), None, tmp_path)
    assert [row["lr"] for row in report.losses] == pytest.approx(
        [lr * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)], abs=1e-12)
    constant, _ = trainer(TrainConfig(lr=lr, epochs=1, batch_size=1, scheduler="none", save_every=1000))
    assert {row["lr"] for row in constant.train(items(tokenizer), None, tmp_path / "constant").losses} == {lr}


def test_optimizer_is_the_published_sgd_over_the_lora_parameters_only() -> None:
    lora_trainer, _ = trainer(TrainConfig())
    optimizer = lora_trainer.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (5e-6, 0.9, 0.01)
    names = {id(p): name for name, p in lora_trainer.model.named_parameters()}
    held = [names[id(p)] for p in group["params"]]
    assert held and all("lora_" in name for name in held)
    assert len(held) == sum(1 for name in names.values() if "lora_" in name)


def test_no_gradient_clipping_unless_max_grad_norm_is_set(tmp_path: Path, monkeypatch) -> None:
    calls: list[float] = []

    def measure(params, norm):
        calls.append(norm)
        return torch.tensor(1.5)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", measure)
    unclipped, tokenizer = trainer(TrainConfig(epochs=1, save_every=1000))
    assert unclipped.train_config.max_grad_norm is None
    report = unclipped.train(items(tokenizer, 2), None, tmp_path / "a")
    assert calls == [math.inf, math.inf]  # measured every step, never clipped
    assert [row["grad_norm"] for row in report.losses] == [1.5, 1.5]
    calls.clear()
    clipped, _ = trainer(TrainConfig(epochs=1, save_every=1000, max_grad_norm=1.0))
    clipped.train(items(tokenizer, 2), None, tmp_path / "b")
    assert calls == [1.0, 1.0]


def test_each_step_logs_the_gradient_norm_before_clipping(tmp_path: Path) -> None:
    rows: list[dict] = []
    clipped, tokenizer = trainer(TrainConfig(optimizer="adamw", lr=1e-2, epochs=1, batch_size=1, save_every=1000,
                                             max_grad_norm=1e-6))
    report = clipped.train(items(tokenizer, 3), None, tmp_path, on_log=rows.append)
    assert [row["step"] for row in rows] == [1, 2, 3] and rows == report.losses
    norms = [row["grad_norm"] for row in rows]
    assert all(math.isfinite(norm) and norm > 1e-6 for norm in norms)  # the norm before clipping to 1e-6


def test_old_checkpoints_without_scheduler_state_fast_forward_the_schedule(tmp_path: Path) -> None:
    train = TrainConfig(lr=0.01, epochs=2, batch_size=1, save_every=3)
    first, tokenizer = trainer(train)
    with pytest.raises(Killed):
        first.train(items(tokenizer), None, tmp_path, on_log=kill_at(4))
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    del state["scheduler"]
    torch.save(state, tmp_path / "checkpoint" / "state.pt")
    resumed, _ = trainer(train)
    report = resumed.train(items(tokenizer), None, tmp_path)
    assert report.resumed_from_step == 3  # step 4 runs at lr * (1 + cos(3 pi / 4)) / 2, as in a straight run
    assert report.losses[3]["step"] == 4
    assert report.losses[3]["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * 3 / 4)) / 2)


def self_distillation_signal(model, tokenizer, train_items: list[TrainItem], rest_mass: bool) -> TopKCache:
    """The tiny model's own top-k at the answer positions: the student (same model, zero LoRA) matches it."""
    batch = collate(train_items, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    rows = answer_logits(logits, batch["starts"], batch["lengths"])
    indices, values, log_rest = teacher_topk(rows, 5, 2.0)
    entries, offset = {}, 0
    for item, length in zip(train_items, batch["lengths"]):
        part = slice(offset, offset + length)
        entries[item.example_id] = ((indices[part], values[part], log_rest[part]) if rest_mass
                                    else (indices[part], values[part]))
        offset += length
    return TopKCache(entries, 5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("tail", ["renormalize", "rest_bucket"])
def test_trainer_passes_kl_direction_and_topk_tail(tmp_path: Path, direction: str, tail: str) -> None:
    train = TrainConfig(epochs=1, batch_size=2, save_every=1000)
    lora_trainer, tokenizer = trainer(train, alpha=0.5, kl_direction=direction, topk_tail=tail)
    teacher_model, _ = build_tiny_llama(seed=0)
    train_items = items(tokenizer)
    signal = self_distillation_signal(teacher_model, tokenizer, train_items, rest_mass=True)
    report = lora_trainer.train(train_items, signal, tmp_path)
    assert report.losses[0]["kl"] < 1e-3  # step 1: the student is the teacher (LoRA B = 0; fp16 teacher values)


def test_rest_bucket_without_the_teachers_rest_mass_fails_before_training(tmp_path: Path) -> None:
    lora_trainer, tokenizer = trainer(TrainConfig(epochs=1, save_every=1000), alpha=0.5, topk_tail="rest_bucket")
    teacher_model, _ = build_tiny_llama(seed=0)
    train_items = items(tokenizer, 2)
    signal = self_distillation_signal(teacher_model, tokenizer, train_items, rest_mass=False)
    with pytest.raises(ValueError, match="topk_tail=renormalize"):
        lora_trainer.train(train_items, signal, tmp_path)
    assert not (tmp_path / "adapter").exists()


def test_rest_mass_computed_at_another_temperature_is_refused(tmp_path: Path) -> None:
    lora_trainer, tokenizer = trainer(TrainConfig(epochs=1, save_every=1000), alpha=0.5, topk_tail="rest_bucket")
    teacher_model, _ = build_tiny_llama(seed=0)
    train_items = items(tokenizer, 2)
    signal = self_distillation_signal(teacher_model, tokenizer, train_items, rest_mass=True)
    signal.temperature = 5.0  # the trainer's is 2.0
    with pytest.raises(ValueError, match="T=5.0"):
        lora_trainer.train(train_items, signal, tmp_path)


def test_lora_dropout_per_arm_as_published() -> None:
    lora = LoRAConfig()  # dropout 0.1 for every arm ...
    by_arm = {"base": 0.2}  # ... except Base-KD
    assert lora_for_arm(lora, "base", by_arm).dropout == 0.2
    assert {lora_for_arm(lora, arm, by_arm).dropout for arm in ("gt_finetune", "ground_truth", "teacher")} == {0.1}


def test_adapter_loads_for_evaluation(tmp_path: Path) -> None:
    train = TrainConfig(optimizer="adamw", lr=5e-2, epochs=2, batch_size=2, save_every=1000, scheduler="none")
    lora_trainer, tokenizer = trainer(train)
    report = lora_trainer.train(items(tokenizer), None, tmp_path)
    config = ModelConfig(name="tiny", backend="hf", model_id="embedded:tiny-llama", tiny=True)
    base = HFChatModel.from_config(config)
    tuned = HFChatModel.from_config(ModelConfig(**{**config.__dict__, "adapter_path": report.adapter_dir}))
    assert "+lora:" in tuned.model_id and tuned.model_id != base.model_id
    from bench.models.base import GenerationRequest, SamplingParams

    request = [GenerationRequest.chat(None, "What is 1 + 1?", SamplingParams(max_new_tokens=8))]
    assert tuned.generate(request, progress=False)[0].text != base.generate(request, progress=False)[0].text
