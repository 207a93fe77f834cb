"""On-policy distillation through TRL on the tiny model: the adapter learns, RP-KD's optimiser, schedule and step
budget are the ones in effect, the costs add up, and a killed run resumes from TRL's checkpoint to the very adapter
and loss rows of an uninterrupted run."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.config import LoRAConfig, TrainConfig
from bench.models.embedded import build_tiny_llama
from bench.training.kd import prompt_ids
from bench.training.lora_trainer import optimizer_steps
from bench.training.trl_distill import RolloutSettings, distill_on_policy, rollout_tokens

LORA = LoRAConfig(r=4, alpha=8, dropout=0.0)
SETTINGS = RolloutSettings(beta=1.0, temperature=1.0, max_completion_length=6)
PROMPTS = [f"What is {i} + {i}?" for i in range(4)]


class Killed(Exception):
    pass


def distill(tmp_path: Path, train: TrainConfig, prompts: list[str] = PROMPTS, on_log=None):
    student, tokenizer = build_tiny_llama(seed=0)
    teacher, _ = build_tiny_llama(seed=1)  # another random model: the divergence is far from zero
    return distill_on_policy(student, teacher, tokenizer, prompts, LORA, train, SETTINGS, tmp_path, progress=False,
                             on_log=on_log), tokenizer


def lora_b(adapter: Path) -> list[torch.Tensor]:
    weights = load_file(adapter / "adapter_model.safetensors")
    return [tensor for name, tensor in weights.items() if "lora_B" in name]


def test_distillation_trains_the_adapter_and_counts_what_the_teacher_scored(tmp_path: Path) -> None:
    rows: list[dict] = []
    train = TrainConfig(optimizer="adamw", lr=1e-2, epochs=1, batch_size=1, scheduler="none", save_every=1000)
    report, tokenizer = distill(tmp_path, train, on_log=rows.append)
    assert report.steps == len(PROMPTS) == len(report.losses)
    assert [row["step"] for row in report.losses] == [1, 2, 3, 4] and rows == report.losses
    assert all(row["loss"] > 0 and row["lr"] == pytest.approx(1e-2) for row in report.losses)
    adapter = Path(report.adapter_dir)
    assert (adapter / "adapter_config.json").exists() and not (tmp_path / "trainer").exists()
    assert any(bool(b.abs().sum() > 0) for b in lora_b(adapter))  # LoRA B starts at zero: it moved
    # every prompt is rolled out once; the teacher scores each prompt + rollout, exactly as chat-templated here
    assert 0 < report.rollout_tokens <= len(PROMPTS) * SETTINGS.max_completion_length
    prompt_tokens = sum(len(prompt_ids(tokenizer, prompt)) for prompt in PROMPTS)
    assert report.forward_tokens == prompt_tokens + report.rollout_tokens


def test_rpkd_optimiser_schedule_and_step_budget_are_in_effect(tmp_path: Path) -> None:
    # 5 items, batches of 2 (the last one short), 2 micro-batches per step, 2 epochs: RP-KD's 3 optimizer steps
    train = TrainConfig(optimizer="sgd", lr=0.1, epochs=2, batch_size=2, grad_accum=2, save_every=1000)
    assert (train.scheduler, train.scheduler_t_max) == ("cosine", None)
    prompts = [*PROMPTS, "What is 9 + 9?"]
    report, _ = distill(tmp_path, train, prompts)
    assert report.steps == optimizer_steps(len(prompts), train) == 3
    # RP-KD's CosineAnnealingLR with T_max = the number of items, stepped after every optimizer step; TRL's own
    # default (AdamW, linear decay to 0 over the run) would log 0.1, 0.0667, 0.0333
    expected = [0.1 * (1 + math.cos(math.pi * step / len(prompts))) / 2 for step in range(3)]
    assert [row["lr"] for row in report.losses] == pytest.approx(expected)
    assert report.rollout_tokens <= 3 * 4 * SETTINGS.max_completion_length  # 4 rollouts per step


def test_a_killed_run_resumes_from_the_last_checkpoint_and_counts_each_step_once(tmp_path: Path) -> None:
    train = TrainConfig(optimizer="adamw", lr=1e-2, epochs=1, batch_size=1, scheduler="none", save_every=2)

    def kill_at_3(row: dict) -> None:
        if row["step"] == 3:
            raise Killed

    with pytest.raises(Killed):
        distill(tmp_path / "killed", train, on_log=kill_at_3)
    assert (tmp_path / "killed" / "trainer" / "checkpoint-2").is_dir()
    assert not (tmp_path / "killed" / "adapter").exists()
    resumed, tokenizer = distill(tmp_path / "killed", train)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    assert not (tmp_path / "killed" / "trainer").exists()  # the adapter supersedes the checkpoints
    assert [row["step"] for row in resumed.losses] == [1, 2, 3, 4]  # restored from TRL's checkpoint
    prompt_tokens = sum(len(prompt_ids(tokenizer, prompt)) for prompt in PROMPTS)
    assert resumed.forward_tokens == prompt_tokens + resumed.rollout_tokens  # each prompt once, in all
    whole, _ = distill(tmp_path / "whole", train)
    assert whole.resumed_from_step == 0
    assert [row["loss"] for row in resumed.losses] == pytest.approx([row["loss"] for row in whole.losses])
    for a, b in zip(lora_b(Path(resumed.adapter_dir)), lora_b(Path(whole.adapter_dir))):
        assert torch.allclose(a, b, atol=1e-6)


def test_rollout_tokens_need_trl_to_log_completion_lengths() -> None:
    assert rollout_tokens([{"loss": 1.0, "completions/mean_length": 2.5}, {"train_loss": 1.0}], 4) == 10
    with pytest.raises(RuntimeError, match="completions/mean_length"):
        rollout_tokens([{"loss": 1.0}], 1)


def test_the_adapter_starts_where_rpkd_arms_start(tmp_path: Path) -> None:
    """TRL builds the adapter after seeding with train.seed, as LoRATrainer does: with lr 0 the saved adapter is
    the initial one, and it equals the adapter an RP-KD arm starts from."""
    from peft.utils import get_peft_model_state_dict

    from bench.training.lora_trainer import LoRATrainer

    train = TrainConfig(optimizer="sgd", lr=0.0, epochs=1, batch_size=1, save_every=1000, seed=7)
    report, tokenizer = distill(tmp_path, train, PROMPTS[:1])
    model, _ = build_tiny_llama(seed=0)
    rpkd = LoRATrainer(model, LORA, train, temperature=1.0, alpha=1.0, pad_token_id=tokenizer.pad_token_id,
                       progress=False)
    start = get_peft_model_state_dict(rpkd.model)
    saved = load_file(Path(report.adapter_dir) / "adapter_model.safetensors")
    assert set(saved) == set(start) and any("lora_A" in name for name in saved)
    for name, tensor in saved.items():
        assert torch.equal(tensor, start[name]), name


DROPOUT = LoRAConfig(r=4, alpha=8, dropout=0.3)
# 4 prompts, 2 epochs, shuffled: 8 steps, epoch 1 starts after step 4
SHUFFLED = TrainConfig(optimizer="adamw", lr=1e-2, epochs=2, batch_size=1, scheduler="cosine", shuffle=True)


def distill_with(folder: Path, train: TrainConfig, lora: LoRAConfig, on_log=None):
    student, tokenizer = build_tiny_llama(seed=0)
    teacher, _ = build_tiny_llama(seed=1)
    return distill_on_policy(student, teacher, tokenizer, PROMPTS, lora, train, SETTINGS, folder, progress=False,
                             on_log=on_log)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted on-policy run with LoRA dropout and shuffling (checkpoints change nothing it computes)."""
    return distill_with(tmp_path_factory.mktemp("uninterrupted"), SHUFFLED, DROPOUT)


@pytest.mark.parametrize(("save_every", "killed_at", "resumed_at"),
                         [(2, 3, 2), (4, 5, 4), (3, 7, 6)], ids=["epoch0", "epoch1_start", "epoch1_middle"])
def test_a_resumed_run_with_dropout_and_shuffling_is_bit_identical_to_an_uninterrupted_one(
        tmp_path: Path, uninterrupted, save_every: int, killed_at: int, resumed_at: int) -> None:
    """transformers' checkpoint restores the python, numpy, torch and CUDA generators (dropout masks and the
    student's sampled rollouts draw from them) and the log history; TRL's prompt sampler keeps its own generator,
    which no checkpoint saves, so a resume in epoch 1 used to replay epoch 0's prompt order
    (`EpochReplaySampler`). Bit-identical on CPU. On a GPU the same prompts and random streams are restored too,
    but kernels that are not deterministic (unless torch.use_deterministic_algorithms) may round differently."""
    train = replace(SHUFFLED, save_every=save_every)

    def kill(row: dict) -> None:
        if row["step"] == killed_at:
            raise Killed

    with pytest.raises(Killed):
        distill_with(tmp_path, train, DROPOUT, on_log=kill)
    resumed = distill_with(tmp_path, train, DROPOUT)
    assert resumed.resumed_from_step == resumed_at
    expected, actual = load_file(Path(uninterrupted.adapter_dir) / "adapter_model.safetensors"), \
        load_file(Path(resumed.adapter_dir) / "adapter_model.safetensors")
    assert expected.keys() == actual.keys()
    assert max(float((expected[name] - actual[name]).abs().max()) for name in expected) == 0.0
    assert resumed.losses == uninterrupted.losses  # every step once, the same floats
    assert (resumed.rollout_tokens, resumed.forward_tokens) == (uninterrupted.rollout_tokens,
                                                                uninterrupted.forward_tokens)


def test_the_replaying_sampler_keeps_trls_order_in_every_epoch() -> None:
    """Uninterrupted, epoch e's order is TRL's own e-th pass (results of earlier runs stand); set_epoch may be called
    more than once per epoch (accelerate and transformers both call it) and must still give that order."""
    from trl.trainer.utils import RepeatSampler

    from bench.training.trl_distill import EpochReplaySampler

    def sampler() -> RepeatSampler:
        return RepeatSampler(list(range(7)), mini_repeat_count=1, batch_size=2, repeat_count=2, seed=3)

    trl_own = sampler()
    expected = [list(trl_own) for _ in range(4)]
    assert len({tuple(order) for order in expected}) == 4  # every epoch reshuffles
    replaying = EpochReplaySampler(sampler())
    for epoch in range(4):
        replaying.set_epoch(epoch)
        replaying.set_epoch(epoch)
        assert list(replaying) == expected[epoch]
    fresh = EpochReplaySampler(sampler())  # a resumed process: epoch 2 first
    fresh.set_epoch(2)
    assert list(fresh) == expected[2] and len(fresh) == len(trl_own)
