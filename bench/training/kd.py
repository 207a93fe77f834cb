"""Token-level KD pieces: sequences whose answer spans line up, and the CE + temperature-scaled KL loss.

The public RP-KD code compares teacher and student logits at the same *indices* although the teacher's sequence
is longer by the priming prompt, so it distils the wrong positions. Here both sequences are built as
`prompt_ids + answer_ids` with the very same `answer_ids`, and each side records where its answer starts: the
logits that predict answer token j sit at `answer_start + j - 1` on either side, whatever the prompt lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def kd_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher_indices: torch.Tensor | None,
            teacher_logits: torch.Tensor | None, temperature: float, alpha: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)` averaged over answer tokens.

    student_logits [N, V] and targets [N] are the answer positions only. The teacher is given as its top-k
    logits [N, k] with their vocabulary indices [N, k]. Both tempered distributions are renormalised over those
    same k tokens, so the KL is a true divergence between two distributions on one support: zero exactly when
    the student ranks and spaces the teacher's top-k like the teacher does. (Gathering the student's *full-vocab*
    log-probs instead leaves a floor of log(V/k)-ish that the student can only lower by pushing every top-k logit
    far above the rest of the vocabulary; at T ~ 6 with T^2 ~ 35 that term swamped CE and flattened the student
    over the teacher's top-k — measured: every KD arm fell to 0% on GSM8K.) Returns (loss, ce, kl).
    """
    ce = F.cross_entropy(student_logits.float(), targets)
    if teacher_indices is None or teacher_logits is None or alpha == 1.0:
        return ce, ce.detach(), torch.zeros((), device=ce.device)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_on_support = student_logits.float().gather(-1, teacher_indices.long())
    student_log_probs = F.log_softmax(student_on_support / temperature, dim=-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1).mean()
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return loss, ce.detach(), kl.detach()
