"""The `published` teacher signal: the public RP-KD computation, defects included, against hand computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.config import LoRAConfig, TrainConfig
from bench.models.embedded import build_tiny_llama
from bench.training.lora_trainer import LoRATrainer
from bench.training.priming import priming_for
from bench.training.published import PublishedItem, published_batch_loss, published_item, published_teacher_ids
from bench.training.teacher_logits import FullLogitsStore, TopKCache, check_disk_room, compute_full_logits

QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
ANSWER = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny_llama(seed=0)
    model.eval()
    return model, tokenizer


def test_items_are_tokenized_as_the_public_code_does(tiny) -> None:
    _, tokenizer = tiny
    item = published_item(tokenizer, "ex", QUESTION, ANSWER, max_length=256)
    # tokenizer(example['question'], truncation=True, max_length=256) and the same for example['answer']
    assert list(item.student_ids) == tokenizer(QUESTION, truncation=True, max_length=256).input_ids
    assert list(item.label_ids) == tokenizer(ANSWER, truncation=True, max_length=256).input_ids
    assert item.positions == min(len(item.student_ids), len(item.label_ids))
    short = published_item(tokenizer, "ex", QUESTION, ANSWER, max_length=5)
    assert (len(short.student_ids), len(short.label_ids)) == (5, 5)
    # no chat template anywhere: the raw question's tokens, and the teacher's raw `priming + question` (exllamav2
    # encode: no special tokens)
    assert "<|im_start|>" not in tokenizer.decode(list(item.student_ids))
    teacher = published_teacher_ids(tokenizer, priming_for("ground_truth").apply(QUESTION))
    assert tokenizer.decode(teacher) == priming_for("ground_truth").text + QUESTION


def hand_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: list[int], temperature: float,
              alpha: float) -> tuple[float, float]:
    """Position by position, written out: CE of student row i against label i (no shift), KL(student || teacher)
    at T over the full vocabulary, each averaged over the n = min(lengths) positions; returns (loss, kd * T^2)."""
    n = min(len(student_logits), len(teacher_logits), len(labels))
    ce = kl = 0.0
    for i in range(n):
        s, t = student_logits[i].double(), teacher_logits[i].double()
        ce += float(torch.logsumexp(s, 0) - s[labels[i]])
        q = torch.exp(s / temperature - torch.logsumexp(s / temperature, 0))
        log_q = torch.log(q)
        log_p = t / temperature - torch.logsumexp(t / temperature, 0)
        kl += float((q * (log_q - log_p)).sum())
    ce, kd = ce / n, temperature**2 * kl / n
    return alpha * ce + (1 - alpha) * kd, kd


def test_batch_loss_equals_a_hand_computation(tiny) -> None:
    model, tokenizer = tiny
    item = published_item(tokenizer, "ex", QUESTION, ANSWER, 256)
    teacher_ids = published_teacher_ids(tokenizer, priming_for("teacher").apply(QUESTION))
    n = min(len(teacher_ids), item.positions)
    with torch.no_grad():
        teacher_logits = model(input_ids=torch.tensor([teacher_ids])).logits[0, :n] * 3.0  # sharper than the student
        student_logits = model(input_ids=torch.tensor([item.student_ids])).logits[0]
    temperature, alpha = 5.942267335064758, 0.6093348343631224
    with torch.no_grad():
        loss, ce, kl = published_batch_loss(model, [item], {"ex": teacher_logits}, temperature, alpha,
                                            tokenizer.pad_token_id)
    expected, kd = hand_loss(student_logits, teacher_logits, list(item.label_ids), temperature, alpha)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(kl) * temperature**2 == pytest.approx(kd, rel=1e-4)  # `kl` is logged without the T^2
    assert float(kl) > 0


def test_fine_tune_control_is_position_wise_cross_entropy(tiny) -> None:
    model, tokenizer = tiny
    item = published_item(tokenizer, "ex", QUESTION, ANSWER, 256)
    with torch.no_grad():
        loss, ce, kl = published_batch_loss(model, [item], None, 2.0, 1.0, tokenizer.pad_token_id)
        logits = model(input_ids=torch.tensor([item.student_ids])).logits[0].double()
    n = item.positions
    # question position i against answer token i: the public code's alignment, not next-token prediction
    expected = sum(float(torch.logsumexp(logits[i], 0) - logits[i, item.label_ids[i]]) for i in range(n)) / n
    assert float(loss) == pytest.approx(expected, rel=1e-4) and float(kl) == 0.0
    shifted = sum(float(torch.logsumexp(logits[i], 0) - logits[i, item.student_ids[i + 1]])
                  for i in range(n - 1)) / (n - 1)
    assert float(loss) != pytest.approx(shifted, rel=1e-3)


def test_a_batch_is_the_mean_of_its_items_and_padding_never_counts(tiny) -> None:
    model, tokenizer = tiny
    items = [published_item(tokenizer, "a", QUESTION, ANSWER, 256),
             published_item(tokenizer, "b", "What is 2 + 2?", "2 + 2 = 4\n#### 4", 256)]
    assert len(items[0].student_ids) != len(items[1].student_ids)
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_output_embeddings().weight.shape[0]
    teacher = {i.example_id: torch.randn(i.positions, vocab, generator=generator) for i in items}
    with torch.no_grad():
        together = published_batch_loss(model, items, teacher, 3.0, 0.5, tokenizer.pad_token_id)
        alone = [published_batch_loss(model, [i], teacher, 3.0, 0.5, tokenizer.pad_token_id) for i in items]
    for part in range(3):
        assert float(together[part]) == pytest.approx((float(alone[0][part]) + float(alone[1][part])) / 2, rel=1e-4)


def test_full_logits_store_keeps_the_first_n_positions_and_resumes(tiny, tmp_path: Path) -> None:
    model, tokenizer = tiny
    sequences = {"gsm8k/train/0": (tokenizer("As a teacher, " + QUESTION).input_ids, 7),
                 "gsm8k/train/1": (tokenizer("What is 2 + 2?").input_ids, 3)}
    store = FullLogitsStore(tmp_path / "logits")
    compute_full_logits(model, sequences, store, batch_size=2, pad_token_id=tokenizer.pad_token_id, progress=False)
    for example_id, (ids, n) in sequences.items():
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([ids])).logits[0, :n]
        stored = store[example_id]
        assert stored.dtype == torch.float16 and stored.shape == direct.shape
        torch.testing.assert_close(stored.float(), direct, atol=2e-2, rtol=1e-3)

    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    compute_full_logits(model, sequences, store, progress=False)
    assert calls == []  # everything already stored: nothing recomputed
    with pytest.raises(KeyError, match="gsm8k/train/2"):
        store["gsm8k/train/2"]


def test_priming_fails_early_when_the_logits_cannot_fit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GiB free"):
        check_disk_room(tmp_path, 10**18)
    check_disk_room(tmp_path, 1)


def test_trainer_trains_published_items_against_full_logits(tiny, tmp_path: Path) -> None:
    _, tokenizer = tiny
    model, _ = build_tiny_llama(seed=0)
    items = [published_item(tokenizer, f"ex{i}", f"What is {i} + {i}?", f"{i} + {i} = {2 * i}\n#### {2 * i}", 256)
             for i in range(3)]
    store = FullLogitsStore(tmp_path / "logits")
    vocab = model.get_output_embeddings().weight.shape[0]
    for item in items:
        store.put(item.example_id, torch.randn(item.positions, vocab))
    train = TrainConfig(optimizer="adamw", lr=1e-2, epochs=1, batch_size=1, save_every=100, shuffle=False)
    trainer = LoRATrainer(model, LoRAConfig(r=4, alpha=8, dropout=0.0), train, temperature=2.0, alpha=0.5,
                          pad_token_id=tokenizer.pad_token_id, progress=False)
    report = trainer.train(items, store, tmp_path / "run")
    assert report.steps == 3 and all(row["kl"] > 0 for row in report.losses)
    with pytest.raises(ValueError, match="full-vocabulary"):
        trainer.train(items, TopKCache({}, 5), tmp_path / "other")


def test_items_are_walked_in_dataset_order_without_shuffle(tiny) -> None:
    _, tokenizer = tiny
    model, _ = build_tiny_llama(seed=0)
    items = [PublishedItem(f"ex{i}", (1, 2, 3), (4, 5, 6)) for i in range(5)]
    train = TrainConfig(epochs=2, batch_size=1, shuffle=False)
    trainer = LoRATrainer(model, LoRAConfig(r=4, alpha=8, dropout=0.0), train, temperature=2.0, alpha=1.0,
                          pad_token_id=tokenizer.pad_token_id, progress=False)
    order = [batch[0].example_id for batch in trainer._order(items)]
    assert order == [f"ex{i}" for i in range(5)] * 2
    shuffled = LoRATrainer(build_tiny_llama(seed=0)[0], LoRAConfig(r=4, alpha=8, dropout=0.0),
                           TrainConfig(epochs=2, batch_size=1), temperature=2.0, alpha=1.0,
                           pad_token_id=tokenizer.pad_token_id, progress=False)
    assert [batch[0].example_id for batch in shuffled._order(items)] != order
