"""KD data alignment, masking, the loss against hand-computed values, and the teacher top-k cache."""

from __future__ import annotations

import math

import pytest
import torch

from bench.models.embedded import build_tiny_llama
from bench.training.kd import (IGNORE, AlignedSequence, KDLoss, aligned_sequence, answer_ids, answer_logits,
                               exact_kl, kd_loss, published_kd_loss, teacher_topk)
from bench.training.priming import priming_for
from bench.training.teacher_logits import TopKCache, check_same_tokenizer, compute_topk


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=0)


def test_teacher_and_student_compare_the_same_answer_tokens(tiny) -> None:
    _, tokenizer = tiny
    question = "Natalia sold 48 clips in April and half as many in May. How many in total?"
    answer = answer_ids(tokenizer, "48 / 2 = 24. 48 + 24 = 72. The answer is 72.")
    student = aligned_sequence(tokenizer, question, answer, max_length=512)
    teacher = aligned_sequence(tokenizer, priming_for("ground_truth").apply(question), answer, 512)
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


# The 3-token case of the direction and tail tests: at T = 2, logits 2 * log(p) give back exactly p.
P3 = (0.5, 0.25, 0.25)  # teacher
Q3 = (0.2, 0.3, 0.5)  # student
T3 = 2.0


def three_token_case() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = torch.tensor([[T3 * math.log(p) for p in P3]], dtype=torch.float64)
    student = torch.tensor([[T3 * math.log(q) for q in Q3]], dtype=torch.float64)
    return student, teacher


def rest_log_mass(teacher: torch.Tensor, indices: torch.Tensor, temperature: float) -> torch.Tensor:
    """log(1 - sum of the teacher's top-k probs at T), computed independently of kd.teacher_topk."""
    probs = torch.softmax(teacher / temperature, dim=-1)
    return torch.log((1 - probs.gather(-1, indices).sum(-1)).clamp(min=0.0))


def kd_term(student: torch.Tensor, teacher: torch.Tensor, k: int, **options) -> float:
    """KL part of kd_loss (alpha = 0, divided by T^2) with the teacher's top-k by logit."""
    values, indices = teacher.topk(k, dim=-1)
    log_rest = rest_log_mass(teacher, indices, T3) if options.get("topk_tail") == "rest_bucket" else None
    loss, _, kl = kd_loss(student, torch.tensor([0]), indices, values, T3, 0.0, teacher_log_rest=log_rest, **options)
    assert float(loss) == pytest.approx(T3**2 * float(kl), rel=1e-12)
    return float(kl)


def test_forward_and_reverse_kl_on_a_hand_computed_three_token_case() -> None:
    student, teacher = three_token_case()
    # forward KL(p||q) = 0.5 ln(0.5/0.2) + 0.25 ln(0.25/0.3) + 0.25 ln(0.25/0.5)
    #                  = 0.458145 - 0.045580 - 0.173287 = 0.239278
    forward = 0.5 * math.log(0.5 / 0.2) + 0.25 * math.log(0.25 / 0.3) + 0.25 * math.log(0.25 / 0.5)
    # reverse KL(q||p) = 0.2 ln(0.2/0.5) + 0.3 ln(0.3/0.25) + 0.5 ln(0.5/0.25)
    #                  = -0.183258 + 0.054696 + 0.346574 = 0.218012
    reverse = 0.2 * math.log(0.2 / 0.5) + 0.3 * math.log(0.3 / 0.25) + 0.5 * math.log(0.5 / 0.25)
    assert forward == pytest.approx(0.239278, abs=1e-6) and reverse == pytest.approx(0.218012, abs=1e-6)
    for tail in ("renormalize", "rest_bucket"):  # k = V: both tails are the exact KL
        assert kd_term(student, teacher, 3, kl_direction="forward", topk_tail=tail) == pytest.approx(forward)
        assert kd_term(student, teacher, 3, kl_direction="reverse", topk_tail=tail) == pytest.approx(reverse)
    assert float(exact_kl(student, teacher, T3, "forward")) == pytest.approx(forward)
    assert float(exact_kl(student, teacher, T3, "reverse")) == pytest.approx(reverse)


def test_top2_tails_on_the_three_token_case() -> None:
    student, teacher = three_token_case()  # teacher's top-2 = tokens 0 and 1 (p 0.5, 0.25)
    # renormalize: p' = (0.5, 0.25) / 0.75 = (2/3, 1/3); q' = (0.2, 0.3) / 0.5 = (0.4, 0.6)
    #   forward = 2/3 ln((2/3)/0.4) + 1/3 ln((1/3)/0.6) = 0.340550 - 0.195929 = 0.144622
    #   reverse = 0.4 ln(0.4/(2/3)) + 0.6 ln(0.6/(1/3)) = -0.204330 + 0.352672 = 0.148342
    assert kd_term(student, teacher, 2, kl_direction="forward") == pytest.approx(0.144622, abs=1e-6)
    assert kd_term(student, teacher, 2, kl_direction="reverse") == pytest.approx(0.148342, abs=1e-6)
    # rest_bucket: buckets {0}, {1}, rest = {2}: one token, so nothing is merged and it is the exact KL
    assert kd_term(student, teacher, 2, kl_direction="forward", topk_tail="rest_bucket") == pytest.approx(0.239278,
                                                                                                       abs=1e-6)
    assert kd_term(student, teacher, 2, kl_direction="reverse", topk_tail="rest_bucket") == pytest.approx(0.218012,
                                                                                                       abs=1e-6)


def random_case(seed: int, rows: int = 6, vocab: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    teacher = 3 * torch.randn(rows, vocab, generator=generator, dtype=torch.float64)
    student = teacher + 2 * torch.randn(rows, vocab, generator=generator, dtype=torch.float64)  # a related model
    return student, teacher


def tails(student: torch.Tensor, teacher: torch.Tensor, k: int, temperature: float, direction: str
          ) -> dict[str, torch.Tensor]:
    """The KL by each tail treatment (and the exact one), with the gradient w.r.t. the student logits."""
    values, indices = teacher.topk(k, dim=-1)
    log_rest = rest_log_mass(teacher, indices, temperature)
    results = {}
    for tail in ("renormalize", "rest_bucket", "full"):
        logits = student.clone().requires_grad_(True)
        if tail == "full":
            kl = exact_kl(logits, teacher, temperature, direction)
        else:  # alpha = 0: the loss is T^2 * KL
            loss, _, _ = kd_loss(logits, torch.zeros(len(logits), dtype=torch.long), indices, values, temperature,
                                 0.0, kl_direction=direction, topk_tail=tail, teacher_log_rest=log_rest)
            kl = loss / temperature**2
        kl.backward()
        results[tail] = (kl.detach(), logits.grad)
    return results


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_rest_bucket_is_the_exact_kl_when_k_is_the_whole_vocabulary(direction: str) -> None:
    student, teacher = random_case(0)
    for k in (50, 49):  # k = V, and k = V - 1 (the rest bucket is a single token)
        result = tails(student, teacher, k, 5.942267, direction)
        assert float(result["rest_bucket"][0]) == pytest.approx(float(result["full"][0]), rel=1e-10)
        assert torch.allclose(result["rest_bucket"][1], result["full"][1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_tails_against_the_full_kl_behave_as_documented(direction: str) -> None:
    student, teacher = random_case(1)
    k, temperature = 5, 5.942267
    result = tails(student, teacher, k, temperature, direction)
    full, rest, renorm = (float(result[t][0]) for t in ("full", "rest_bucket", "renormalize"))
    # merging the tail into one bucket can only lose divergence (log-sum inequality): a lower bound of the full KL
    assert 0.0 < rest <= full
    # renormalize compares shapes on the top-k only: not a bound either way, and blind to the tail
    assert renorm > 0.0 and renorm != pytest.approx(rest)
    _, indices = teacher.topk(k, dim=-1)
    off_support = torch.ones_like(teacher, dtype=torch.bool).scatter(-1, indices, False)
    renorm_grad, rest_grad = result["renormalize"][1], result["rest_bucket"][1]
    assert renorm_grad[off_support].abs().max() == 0.0  # renormalize: no gradient on tail logits
    assert rest_grad[off_support].abs().max() > 0.0  # rest_bucket: the tail mass is trained as one bucket
    # inside the tail, rest_bucket's gradient is proportional to the student's own probabilities there (it moves
    # the bucket's total, never the tail's internal shape)
    probs = torch.softmax(student / temperature, dim=-1)
    ratio = rest_grad[off_support].view(len(student), -1) / probs[off_support].view(len(student), -1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-8)
    # a student equal to the teacher has zero KL under every treatment
    same = tails(teacher, teacher, k, temperature, direction)
    for tail in ("renormalize", "rest_bucket", "full"):
        assert float(same[tail][0]) == pytest.approx(0.0, abs=1e-12)


def test_rest_bucket_needs_the_teachers_rest_mass() -> None:
    student, teacher = random_case(2)
    values, indices = teacher.topk(5, dim=-1)
    with pytest.raises(ValueError, match="outside its top-k"):
        kd_loss(student, torch.zeros(6, dtype=torch.long), indices, values, 2.0, 0.5, topk_tail="rest_bucket")
    with pytest.raises(ValueError, match="kl_direction"):
        kd_loss(student, torch.zeros(6, dtype=torch.long), indices, values, 2.0, 0.5, kl_direction="backward")


def padded_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Student logits [3, 9, 40] of a right-padded batch and its next-token labels: IGNORE on each row's prompt and
    padding, the answer tokens at the answer positions (starts, lengths as `answer_logits` takes them)."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(3, 9, 40, generator=generator)  # float32, as the trainer's student
    starts, lengths = [2, 4, 1], [5, 3, 8]
    labels = torch.full((3, 9), IGNORE)
    for row, (start, length) in enumerate(zip(starts, lengths)):
        labels[row, start - 1:start - 1 + length] = torch.randint(0, 40, (length,), generator=generator)
    return logits, labels, starts, lengths


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("tail", ["renormalize", "rest_bucket"])
@pytest.mark.parametrize("alpha", [0.0, 0.609, 1.0])
def test_kd_module_is_kd_loss_on_the_labelled_rows_bit_for_bit(direction: str, tail: str, alpha: float) -> None:
    """KDLoss on a padded batch against kd_loss on the answer rows selected by hand (`answer_logits`, the rows the
    trainer passed before the module): the same loss, ce, kl and gradient, to the bit."""
    logits, labels, starts, lengths = padded_batch(0)
    rows_count = sum(lengths)
    _, teacher = random_case(4, rows=rows_count, vocab=40)
    values, indices = teacher.float().topk(6, dim=-1)
    log_rest = rest_log_mass(teacher, indices, 2.0).float()
    module = KDLoss(2.0, alpha, kl_direction=direction, topk_tail=tail)
    batch = logits.clone().requires_grad_(True)
    got = module(batch, labels, indices, values, log_rest)
    got[0].backward()
    by_hand = logits.clone().requires_grad_(True)
    rows = answer_logits(by_hand, starts, lengths)
    targets = torch.cat([labels[row, start - 1:start - 1 + length] for row, (start, length)
                         in enumerate(zip(starts, lengths))])
    expected = kd_loss(rows, targets, indices, values, 2.0, alpha, kl_direction=direction, topk_tail=tail,
                       teacher_log_rest=log_rest)
    expected[0].backward()
    for mine, reference in zip(got, expected):
        assert torch.equal(mine, reference)
    assert torch.equal(batch.grad, by_hand.grad)
    assert float(got[0].detach()) > 0.0 and (alpha == 1.0 or float(got[2]) > 0.0)  # a real loss, not two zeros


def test_kd_module_ignores_prompt_and_padding_positions() -> None:
    logits, labels, _, lengths = padded_batch(1)
    _, teacher = random_case(5, rows=sum(lengths), vocab=40)
    values, indices = teacher.float().topk(4, dim=-1)
    module = KDLoss(5.942267, 0.5, kl_direction="reverse")
    batch = logits.clone().requires_grad_(True)
    loss, _, _ = module(batch, labels, indices, values)
    loss.backward()
    ignored = labels == IGNORE
    assert batch.grad[ignored].abs().max() == 0.0 and batch.grad[~ignored].abs().max() > 0.0
    scrambled = logits.clone()
    scrambled[ignored] = 100 * torch.randn_like(scrambled[ignored])  # whatever the model says there
    assert torch.equal(module(scrambled, labels, indices, values)[0], loss.detach())


def test_kd_module_refuses_what_does_not_line_up() -> None:
    logits, labels, _, lengths = padded_batch(2)
    _, teacher = random_case(6, rows=sum(lengths) - 1, vocab=40)
    values, indices = teacher.topk(4, dim=-1)
    with pytest.raises(ValueError, match="labelled positions"):
        KDLoss(2.0, 0.5)(logits, labels, indices, values)  # one teacher row short
    with pytest.raises(ValueError, match="line up"):
        KDLoss(2.0, 0.5)(logits, labels[:, 1:])
    with pytest.raises(ValueError, match="alpha"):
        KDLoss(2.0, 1.5)
    with pytest.raises(ValueError, match="topk_tail"):
        KDLoss(2.0, 0.5, topk_tail="drop")


def test_teacher_topk_keeps_what_either_tail_needs() -> None:
    _, teacher = random_case(3)
    indices, values, log_rest = teacher_topk(teacher, 4, 5.942267)
    assert indices.dtype == torch.int32 and values.dtype == torch.float16 and log_rest.dtype == torch.float32
    assert torch.equal(indices.long(), teacher.topk(4, dim=-1).indices)
    assert torch.allclose(log_rest.double(), rest_log_mass(teacher, indices.long(), 5.942267), rtol=1e-6)
    # a rest mass far below fp16's resolution of the top-k values keeps its precision (no 1 - sum cancellation)
    peaked = torch.tensor([[30.0, 28.0, 0.0, 0.0]])
    _, _, small = teacher_topk(peaked, 2, 1.0)
    assert float(small) == pytest.approx(math.log(2 * math.exp(0.0) / (math.exp(30) + math.exp(28) + 2)), rel=1e-5)


def test_published_loss_matches_a_hand_computation() -> None:
    # B = 1, V = 2; student 3 positions, teacher 2, labels 4: the first min(3, 2, 4) = 2 positions are used.
    student = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    labels = torch.tensor([[0, 1, 1, 1]])
    temperature, alpha = 2.0, 0.25
    # CE, position-wise (student position i against label i, no shift), mean over the 2 positions:
    #   pos 0: -ln(e / (e + 1)) = ln(1 + 1/e) = 0.313262;  pos 1: -ln(1/2) = 0.693147;  CE = 0.503204
    ce = (math.log(1 + 1 / math.e) + math.log(2)) / 2
    # At T = 2 (softmax of logits / 2): student pos 0 q0 = softmax(0.5, 0) = (0.622459, 0.377541), pos 1 q1 =
    # (0.5, 0.5); teacher pos 0 p0 = softmax(0, 0.5) = (0.377541, 0.622459), pos 1 p1 = softmax(1, 0) =
    # (0.731059, 0.268941).
    def softmax(xs: list[float]) -> list[float]:
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    q0, q1 = softmax([0.5, 0.0]), softmax([0.0, 0.0])
    p0, p1 = softmax([0.0, 0.5]), softmax([1.0, 0.0])
    # KL(student || teacher) per position: sum q ln(q / p) -> pos 0: 0.122459, pos 1: 0.120115;
    # batchmean over the 2 flattened positions, times T^2 = 4: KD = 4 * (0.122459 + 0.120115) / 2 = 0.485148
    kl0 = sum(q * math.log(q / p) for q, p in zip(q0, p0))
    kl1 = sum(q * math.log(q / p) for q, p in zip(q1, p1))
    kd = temperature**2 * (kl0 + kl1) / 2
    # loss = 0.25 * 0.503204 + 0.75 * 0.485148 = 0.489662
    expected = alpha * ce + (1 - alpha) * kd
    assert (ce, kd, expected) == pytest.approx((0.503204, 0.485148, 0.489662), abs=1e-6)
    loss, ce_value, kd_value = published_kd_loss(student, teacher, labels, temperature, alpha)
    assert float(ce_value) == pytest.approx(ce, rel=1e-6)
    assert float(kd_value) == pytest.approx(kd, rel=1e-6)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # the published KD term is the reverse KL (student || teacher) over the full vocabulary, not the forward one
    rows = student[0, :2], teacher[0, :2]
    assert float(kd_value) == pytest.approx(temperature**2 * float(exact_kl(*rows, temperature, "reverse")), rel=1e-6)
    assert float(kd_value) != pytest.approx(temperature**2 * float(exact_kl(*rows, temperature, "forward")), rel=1e-3)


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


def test_topk_cache_at_a_temperature_keeps_the_rest_mass(tiny, tmp_path) -> None:
    model, tokenizer = tiny
    sequences = {f"ex{i}": aligned_sequence(tokenizer, f"Question {i}?", answer_ids(tokenizer, "x " * (i + 2)), 128)
                 for i in range(2)}
    cache = compute_topk(model, sequences, k=5, batch_size=2, pad_token_id=tokenizer.pad_token_id, progress=False,
                         temperature=5.942267)
    cache.save(tmp_path / "topk.pt")
    loaded = TopKCache.load(tmp_path / "topk.pt")
    assert loaded.temperature == pytest.approx(5.942267)
    for key, sequence in sequences.items():
        indices, values, log_rest = loaded[key]
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([sequence.input_ids])).logits
        rows = answer_logits(alone, [sequence.answer_start], [sequence.answer_length]).double() / 5.942267
        probs = rows.softmax(-1)
        outside = 1 - probs.gather(-1, indices.long()).sum(-1)  # an independent rest mass, in float64
        torch.testing.assert_close(log_rest.double(), outside.log(), atol=1e-4, rtol=1e-4)
    trimmed = loaded.trimmed({"ex1": 2})
    assert len(trimmed) == 1 and all(len(part) == 2 for part in trimmed["ex1"]) and trimmed.temperature == loaded.temperature


def test_different_tokenizers_are_refused(tiny) -> None:
    _, tokenizer = tiny

    class Other:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 0}

    check_same_tokenizer(tokenizer, tokenizer)
    with pytest.raises(ValueError, match="signal=sequence"):
        check_same_tokenizer(tokenizer, Other())
