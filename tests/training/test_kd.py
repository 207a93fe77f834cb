"""KD data alignment, masking, the loss against hand-computed values, and the teacher top-k cache."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models.embedded import build_tiny_llama
from bench.training.kd import IGNORE, AlignedSequence, aligned_sequence, answer_ids, answer_logits, kd_loss
from bench.training.priming import PRIMING_PROMPTS, primed_question
from bench.training.teacher_logits import TopKCache, check_same_tokenizer, compute_topk


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=0)


def test_teacher_and_student_compare_the_same_answer_tokens(tiny) -> None:
    _, tokenizer = tiny
    question = "Natalia sold 48 clips in April and half as many in May. How many in total?"
    answer = answer_ids(tokenizer, "48 / 2 = 24. 48 + 24 = 72. The answer is 72.")
    student = aligned_sequence(tokenizer, question, answer, max_length=512)
    teacher = aligned_sequence(tokenizer, primed_question(PRIMING_PROMPTS["ground_truth"], question), answer, 512)
    assert teacher.answer_start > student.answer_start + 10  # the priming prefix shifts every answer position
    assert student.input_ids[student.answer_start:] == teacher.input_ids[teacher.answer_start:] == tuple(answer)

    # A "model" whose logits at position t point at token t+1: the selected rows must predict the answer tokens.
    def oracle_logits(sequence: AlignedSequence) -> torch.Tensor:
        ids = torch.tensor(sequence.input_ids)
        logits = torch.full((1, len(ids), len(tokenizer)), -1e4)
        logits[0, torch.arange(len(ids) - 1), ids[1:]] = 0.0
        return logits

    for sequence in (student, teacher):
        rows = answer_logits(oracle_logits(sequence), [sequence.answer_start], [sequence.answer_length])
        assert rows.argmax(-1).tolist() == answer
    # the public code's bug: same indices on both sides select different tokens
    naive = oracle_logits(teacher)[0, student.answer_start - 1:student.answer_start - 1 + len(answer)]
    assert naive.argmax(-1).tolist() != answer


def test_labels_mask_the_prompt_and_keep_answer_and_eos(tiny) -> None:
    _, tokenizer = tiny
    answer = answer_ids(tokenizer, "The answer is 4.")
    assert answer[-1] == tokenizer.eos_token_id
    sequence = aligned_sequence(tokenizer, "What is 2 + 2?", answer, max_length=256)
    labels = sequence.labels()
    assert labels[: sequence.answer_start] == [IGNORE] * sequence.answer_start
    assert labels[sequence.answer_start:] == answer


def test_long_answers_are_cut_never_the_prompt(tiny) -> None:
    _, tokenizer = tiny
    answer = answer_ids(tokenizer, "word " * 400)
    sequence = aligned_sequence(tokenizer, "Q?", answer, max_length=64)
    assert len(sequence.input_ids) == 64 and sequence.input_ids[sequence.answer_start] == answer[0]
    with pytest.raises(ValueError, match="max_length"):
        aligned_sequence(tokenizer, "long question " * 100, answer, max_length=32)


def test_kd_loss_matches_a_hand_computation() -> None:
    student = torch.tensor([[2.0, 0.0, 0.0]])
    target = torch.tensor([0])
    teacher_indices = torch.tensor([[0, 1]])  # top-2 of the teacher
    teacher_logits = torch.tensor([[1.0, 1.0]])
    temperature, alpha = 2.0, 0.25
    # CE = -log(e^2 / (e^2 + 2))
    ce = -math.log(math.e**2 / (math.e**2 + 2))
    # teacher at T=2 renormalised over its top-2: p = (0.5, 0.5)
    # student at T=2 on the same support {0, 1}: logits (1, 0) -> q = (e, 1) / (e + 1)
    q0, q1 = math.e / (math.e + 1), 1 / (math.e + 1)
    kl = 0.5 * math.log(0.5 / q0) + 0.5 * math.log(0.5 / q1)
    expected = alpha * ce + (1 - alpha) * temperature**2 * kl
    loss, ce_value, kl_value = kd_loss(student, target, teacher_indices, teacher_logits, temperature, alpha)
    assert float(ce_value) == pytest.approx(ce, rel=1e-6)
    assert float(kl_value) == pytest.approx(kl, rel=1e-6)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_without_teacher_is_cross_entropy() -> None:
    student, target = torch.randn(5, 7), torch.randint(0, 7, (5,))
    loss, _, kl = kd_loss(student, target, None, None, 5.94, 0.609)
    assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(student, target)))
    assert float(kl) == 0.0


def test_kl_is_zero_when_student_equals_teacher_on_its_support() -> None:
    logits = torch.tensor([[3.0, 1.0, -50.0, -50.0]])
    _, _, kl = kd_loss(logits, torch.tensor([0]), torch.tensor([[0, 1]]), logits[:, :2], 2.0, 0.5)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)


def test_kl_ignores_the_students_mass_outside_the_teachers_top_k() -> None:
    """At a high temperature most of the student's mass sits in the tail; that alone must not count as
    divergence, or the loss pushes every top-k logit far above the vocabulary and flattens the student."""
    teacher_top2 = torch.tensor([[3.0, 1.0]])
    student = torch.tensor([[3.0, 1.0] + [2.0] * 1000])  # same top-2 shape, a heavy tail
    _, _, kl = kd_loss(student, torch.tensor([0]), torch.tensor([[0, 1]]), teacher_top2, 5.94, 0.609)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)
    shifted = student.clone()
    shifted[0, :2] += 7.0  # same spacing on the support, only further above the tail: same loss
    _, _, kl_shifted = kd_loss(shifted, torch.tensor([0]), torch.tensor([[0, 1]]), teacher_top2, 5.94, 0.609)
    assert float(kl_shifted) == pytest.approx(0.0, abs=1e-6)


def test_kl_gradient_moves_the_student_toward_the_teachers_ranking() -> None:
    teacher_top2 = torch.tensor([[4.0, 0.0]])
    student = torch.tensor([[0.0, 4.0, 1.0, 1.0]], requires_grad=True)  # ranks the two the other way round
    loss, _, _ = kd_loss(student, torch.tensor([0]), torch.tensor([[0, 1]]), teacher_top2, 2.0, 0.0)
    loss.backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descent raises token 0 and lowers token 1
    assert student.grad[0, 2:].abs().max() < 1e-7  # tail logits get no KL gradient


def test_topk_cache_round_trip_and_values(tiny, tmp_path) -> None:
    model, tokenizer = tiny
    sequences = {f"ex{i}": aligned_sequence(tokenizer, f"Question {i}?", answer_ids(tokenizer, "x " * (i + 2)), 128)
                 for i in range(3)}
    cache = compute_topk(model, sequences, k=5, batch_size=2, pad_token_id=tokenizer.pad_token_id, progress=False)
    cache.save(tmp_path / "topk.pt")
    loaded = TopKCache.load(tmp_path / "topk.pt")
    assert loaded.k == 5 and len(loaded) == 3
    for key, sequence in sequences.items():
        indices, values = loaded[key]
        assert indices.shape == values.shape == (sequence.answer_length, 5)
        assert torch.equal(indices, cache[key][0]) and torch.equal(values, cache[key][1])
        # the batched, padded forward gives the same top-k as this sequence alone
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([sequence.input_ids])).logits
        rows = answer_logits(alone, [sequence.answer_start], [sequence.answer_length])
        assert torch.equal(rows.topk(5, dim=-1).indices.to(torch.int32), indices)


def test_different_tokenizers_are_refused(tiny) -> None:
    _, tokenizer = tiny

    class Other:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 0}

    check_same_tokenizer(tokenizer, tokenizer)
    with pytest.raises(ValueError, match="signal=sequence"):
        check_same_tokenizer(tokenizer, Other())
