"""Token-level KD pieces: sequences whose answer spans line up, and the CE + temperature-scaled KL loss.

The public RP-KD code compares teacher and student logits at the same *indices* although the teacher's sequence
is longer by the priming prompt, so it distils the wrong positions. Here both sequences are built as
`prompt_ids + answer_ids` with the very same `answer_ids`, and each side records where its answer starts: the
logits that predict answer token j sit at `answer_start + j - 1` on either side, whatever the prompt lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import KLDirection, TopKTail

IGNORE = -100


@dataclass(frozen=True)
class AlignedSequence:
    """Token ids of one training sequence and where its answer (the supervised, distilled part) begins."""

    input_ids: tuple[int, ...]
    answer_start: int

    @property
    def answer_length(self) -> int:
        return len(self.input_ids) - self.answer_start

    def labels(self) -> list[int]:
        return [IGNORE] * self.answer_start + list(self.input_ids[self.answer_start:])


def prompt_ids(tokenizer, user_message: str) -> list[int]:
    """The chat-templated prompt up to (and including) the assistant header."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer's tokens followed by EOS, so the student learns to stop (a common complaint after SFT)."""
    return tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def aligned_sequence(tokenizer, user_message: str, answer: list[int], max_length: int) -> AlignedSequence:
    """prompt + answer, cutting the answer's end (never the prompt) when longer than max_length."""
    prompt = prompt_ids(tokenizer, user_message)
    if len(prompt) >= max_length:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves no room for the answer within max_length="
                         f"{max_length}; raise method.train.max_length")
    return AlignedSequence(tuple(prompt + answer[: max_length - len(prompt)]), len(prompt))


def answer_logits(logits: torch.Tensor, starts: list[int], lengths: list[int]) -> torch.Tensor:
    """Rows of `logits` [batch, time, vocab] that predict each sequence's answer tokens, concatenated."""
    return torch.cat([logits[b, start - 1:start - 1 + length] for b, (start, length) in enumerate(zip(starts,
                                                                                                      lengths))])


KL_DIRECTIONS = tuple(d.value for d in KLDirection)  # the schema's choices, for losses configured in code
TOPK_TAILS = tuple(t.value for t in TopKTail)


def check_kd_options(kl_direction: str, topk_tail: str) -> None:
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {kl_direction!r}")
    if topk_tail not in TOPK_TAILS:
        raise ValueError(f"topk_tail must be one of {TOPK_TAILS}, got {topk_tail!r}")


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 at least (bf16 log-softmax is too coarse for a KL), float64 kept (exact reference checks)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor, direction: str) -> torch.Tensor:
    """Mean over rows of KL between two distributions given as log-probabilities on the same buckets [N, B].

    `log_p` is the teacher's side, `log_q` the student's: forward = KL(p||q) = sum p (log p - log q), the usual
    distillation objective (mass-covering); reverse = KL(q||p) = sum q (log q - log p) (mode-seeking), the
    published RP-KD direction.
    """
    if direction == "forward":
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    if direction == "reverse":
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {direction!r}")


def exact_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             direction: str = "forward") -> torch.Tensor:
    """The full-vocabulary KL at temperature T between [N, V] teacher and student logits: what top-k approximates."""
    dtype = _compute_dtype(student_logits)
    return kl_from_log_probs(F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1),
                             F.log_softmax(student_logits.to(dtype) / temperature, dim=-1), direction)


def teacher_topk(logits: torch.Tensor, k: int, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a teacher cache must keep per position for either tail: (indices int32 [N, k], logits fp16 [N, k],
    log_rest float32 [N] = log of the teacher's tempered probability mass OUTSIDE its top k).

    `renormalize` needs only the first two. `rest_bucket` also needs log_rest: it cannot be recovered from the
    top-k logits (it depends on the whole vocabulary, and on T). It is computed here, from the full fp32 row, by a
    logsumexp over the off-top-k tokens. Deriving it later as 1 - sum(top-k probs) from the fp16 values loses it
    when it is small: fp16 spacing is 1/64 for logits in [16, 32), so at T = 1 a top token's prob is off by up to
    0.8%, a large share of a 2% rest (benchmarks/kd_topk.py: with that derivation the "lower bound" overshot the
    exact KL and grew worse with k).
    """
    scaled = logits.float() / temperature
    values, indices = logits.float().topk(k, dim=-1)
    log_rest = _off_support_logsumexp(scaled, indices) - torch.logsumexp(scaled, dim=-1)
    return indices.to(torch.int32), values.to(torch.float16), log_rest


def _off_support_logsumexp(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """logsumexp of each row's entries outside `indices`; a very negative finite number when there are none (the
    finite fill keeps the backward free of NaN: exp(-inf - -inf) would be one)."""
    return torch.logsumexp(scores.scatter(-1, indices, torch.finfo(scores.dtype).min), dim=-1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate on both ends (Maechler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_bucket_log_probs(student_logits: torch.Tensor, teacher_indices: torch.Tensor,
                          teacher_logits: torch.Tensor, temperature: float, topk_tail: str,
                          teacher_log_rest: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher log-probs, student log-probs) on the buckets the top-k KL compares, both at temperature T.

    renormalize: the k teacher tokens; both sides renormalised over them ([N, k]). The student's tail mass is
        ignored, so a student that spreads the teacher's top-k like the teacher does has KL 0 however much mass
        it leaves in the rest of the vocabulary.
    rest_bucket: the k teacher tokens plus one bucket for everything else ([N, k + 1]). The student's side is
        its FULL-vocabulary log-softmax on the k tokens, and its rest = 1 - the sum of its probs on them
        (computed as a logsumexp over the other tokens, so a small rest keeps its precision). The teacher's rest
        = 1 - the sum of its top-k probs at T, given as `teacher_log_rest` (see `teacher_topk`); its top-k
        tokens share the remaining mass in the proportions of its top-k logits. Merging the tail into one bucket
        can only lower a KL (log-sum inequality), so this is a lower bound of the full-vocabulary KL, exact when
        k = V or when the two tails are proportional; in the forward direction its gradient on the top-k logits
        is exactly the full KL's, (q - p) / T, and on the tail it assumes the teacher's tail shaped like the
        student's.
    """
    dtype = _compute_dtype(student_logits)
    indices = teacher_indices.long()
    teacher_scaled = teacher_logits.to(dtype) / temperature
    if topk_tail == "renormalize":
        student_on_support = student_logits.to(dtype).gather(-1, indices) / temperature
        return F.log_softmax(teacher_scaled, dim=-1), F.log_softmax(student_on_support, dim=-1)
    if topk_tail != "rest_bucket":
        raise ValueError(f"topk_tail must be one of {TOPK_TAILS}, got {topk_tail!r}")
    if teacher_log_rest is None:
        raise ValueError("topk_tail=rest_bucket needs the teacher's tempered log-mass outside its top-k per position "
                         "(kd.teacher_topk); this teacher signal has top-k logits only. Use topk_tail=renormalize, "
                         "or cache that mass with the top-k.")
    floor = math.log(torch.finfo(dtype).tiny)  # an empty bucket: log 0 clamped, no inf - inf, no NaN gradient
    teacher_rest = teacher_log_rest.to(dtype).clamp(min=floor, max=0.0)
    teacher_top = F.log_softmax(teacher_scaled, dim=-1) + _log1mexp(teacher_rest).unsqueeze(-1)
    student_all = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    student_rest = _off_support_logsumexp(student_all, indices).clamp(min=floor)
    return (torch.cat([teacher_top, teacher_rest.unsqueeze(-1)], dim=-1),
            torch.cat([student_all.gather(-1, indices), student_rest.unsqueeze(-1)], dim=-1))


def kd_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher_indices: torch.Tensor | None,
            teacher_logits: torch.Tensor | None, temperature: float, alpha: float, *,
            kl_direction: str = "forward", topk_tail: str = "renormalize",
            teacher_log_rest: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`alpha * CE + (1 - alpha) * T^2 * KL` averaged over answer tokens; KL between the tempered teacher and
    student on the buckets of `topk_tail`, in `kl_direction` (see `topk_bucket_log_probs`, `kl_from_log_probs`).

    student_logits [N, V] and targets [N] are the answer positions only. The teacher is given as its top-k
    logits [N, k] with their vocabulary indices [N, k] (plus, for rest_bucket, its log-mass outside them [N]). Both
    choices keep the KL a true divergence between two distributions on one support: zero exactly when the
    student matches the teacher there. (Gathering the student's *full-vocab* log-probs on the top-k *without* a
    rest bucket leaves a floor of log(V/k)-ish that the student can only lower by pushing every top-k logit far
    above the rest of the vocabulary; at T ~ 6 with T^2 ~ 35 that term swamped CE and flattened the student
    over the teacher's top-k — measured: every KD arm fell to 0% on GSM8K.) Returns (loss, ce, kl).
    """
    check_kd_options(kl_direction, topk_tail)
    ce = F.cross_entropy(student_logits.to(_compute_dtype(student_logits)), targets)
    if teacher_indices is None or teacher_logits is None or alpha == 1.0:
        return ce, ce.detach(), torch.zeros((), device=ce.device)
    log_p, log_q = topk_bucket_log_probs(student_logits, teacher_indices, teacher_logits, temperature, topk_tail,
                                         teacher_log_rest)
    kl = kl_from_log_probs(log_p, log_q, kl_direction)
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return loss, ce.detach(), kl.detach()


class KDLoss(nn.Module):
    """`kd_loss` configured once (temperature, alpha, KL direction, top-k tail) and applied to whole batches, the
    positions whose label is `ignore_index` masked out, as torchtune's ForwardKLLoss reads.

    forward(student_logits [..., V], labels [...], teacher_indices, teacher_logits, teacher_log_rest) -> (loss, ce,
    kl), `kd_loss`'s values over the positions with a label. `labels` lines up with `student_logits`: the label of
    a position is the token its logits predict (the next token), and `ignore_index` marks prompt and padding. The
    teacher's top-k comes packed, one row per labelled position in row-major order ([N, k], [N, k], [N]; a teacher
    cache holds nothing for prompt or padding), so it is given only where the loss reads it. The labelled rows are
    gathered before any arithmetic, so the result and its gradient are those of `kd_loss` on the rows a caller
    would select by hand, to the bit.
    """

    def __init__(self, temperature: float, alpha: float, kl_direction: str = "forward",
                 topk_tail: str = "renormalize", ignore_index: int = IGNORE) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        check_kd_options(kl_direction, topk_tail)
        self.temperature = temperature
        self.alpha = alpha
        self.kl_direction = kl_direction
        self.topk_tail = topk_tail
        self.ignore_index = ignore_index

    def forward(self, student_logits: torch.Tensor, labels: torch.Tensor, teacher_indices: torch.Tensor | None = None,
                teacher_logits: torch.Tensor | None = None, teacher_log_rest: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if student_logits.shape[:-1] != labels.shape:
            raise ValueError(f"labels {tuple(labels.shape)} do not line up with student logits "
                             f"{tuple(student_logits.shape)}")
        labelled = labels != self.ignore_index
        student, targets = student_logits[labelled], labels[labelled]
        if teacher_indices is not None and len(teacher_indices) != len(targets):
            raise ValueError(f"the teacher gives {len(teacher_indices)} positions, the labels {len(targets)}: the "
                             "teacher's rows must be the labelled positions, in order")
        return kd_loss(student, targets, teacher_indices, teacher_logits, self.temperature, self.alpha,
                       kl_direction=self.kl_direction, topk_tail=self.topk_tail, teacher_log_rest=teacher_log_rest)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, alpha={self.alpha}, kl_direction={self.kl_direction}, "
                f"topk_tail={self.topk_tail}, ignore_index={self.ignore_index}")


def published_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The public RP-KD code's loss, defects included, to test whether its numbers reproduce.

    student_logits [B, Ls, V] (student on the question only), teacher_logits [B, Lt, V] (full vocabulary; teacher
    on `priming + question`), labels [B, La] (the tokenized answer). As published, all three are cut to their
    first n = min(Ls, Lt, La) positions and compared *position by position*: student position i is trained on
    answer token i (no shift, question positions against answer tokens) and on the teacher's position i (a
    different token once the priming prefix shifts the teacher). Rows are flattened to [B * n, V], so CE is the
    mean over B * n positions (ignore_index -100) and "batchmean" divides the KL sum by B * n.

    KD = F.kl_div(log_softmax(teacher / T), softmax(student / T), reduction="batchmean") * T^2, as called
    there. F.kl_div(input, target) computes sum target * (log target - input), so with input = teacher
    log-probs and target = student probs this is KL(student || teacher), the reverse KL, over the full
    vocabulary (the code's comment says "reverse KL-divergence"). Loss = alpha * CE + (1 - alpha) * KD.
    Returns (loss, ce, kd) with kd already multiplied by T^2.
    """
    n = min(student_logits.size(1), teacher_logits.size(1), labels.size(1))
    vocab = student_logits.size(-1)
    dtype = _compute_dtype(student_logits)
    student = student_logits[:, :n].reshape(-1, vocab).to(dtype)
    teacher = teacher_logits[:, :n].reshape(-1, vocab).to(dtype)
    ce = F.cross_entropy(student, labels[:, :n].reshape(-1))
    kd = F.kl_div(F.log_softmax(teacher / temperature, dim=-1), F.softmax(student / temperature, dim=-1),
                  reduction="batchmean", log_target=False) * temperature**2
    return alpha * ce + (1 - alpha) * kd, ce.detach(), kd.detach()
