"""RP-KD's teacher-signal phase: what the primed teacher gives the student to learn, per arm (`method.signal`).

  published        full-vocabulary logits of the raw `priming + question` (no solution), as the public code;
  reference        top-k logits of the primed teacher forced through the reference solution;
  primed_response  the primed teacher writes a solution, the scorer keeps the right ones, and the teacher's
                   top-k logits on its own kept solution go with it;
  sequence         the kept solutions only (text; API teachers).

Each arm's signal is written under artifacts/<arm>/ with a done-marker, so a resumed run reads it back instead of
asking the teacher again. torch and the training helpers are imported by the steps that use them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.config import RPKDConfig, Signal
from bench.context import LocalLM, RunContext
from bench.models.base import GenerationRequest, Message
from bench.models.cost import FAILED_USAGE_LEDGER, UsageMeter, generate_metered
from bench.training.priming import Priming, Wording, priming_for

if TYPE_CHECKING:
    from bench.tasks.base import Example
    from bench.training.kd import AlignedSequence
    from bench.training.published import PublishedItem
    from bench.training.teacher_logits import FullLogitsStore, TopKCache

logger = logging.getLogger(__name__)


SIGNALS = tuple(s.value for s in Signal)  # the aliases (token) are not listed
RENAMED_SIGNALS = {"token": Signal.reference}  # earlier name, still accepted


def teacher_signal(value: str) -> Signal:
    """What the student learns from the primed teacher (`method.signal`, the schema's `Signal`), from its name."""
    if value in RENAMED_SIGNALS:
        logger.warning("method.signal=%s is now called %s", value, RENAMED_SIGNALS[value].value)
        return RENAMED_SIGNALS[value]
    try:
        return Signal(value)
    except ValueError:
        raise ValueError(f"method.signal must be one of {SIGNALS}, got {value!r}") from None


@dataclass
class TeacherUsage:
    """What priming one arm cost the teacher, and where a teacher-token budget stopped it (the compare study's cost
    axis). Tokens count what the teacher read and wrote: generation prompt + completion, and forward passes."""

    budget_tokens: int | None = None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    forward_tokens: int = 0
    cache_bytes: int = 0
    primed_items: int = 0
    stopped: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens + self.forward_tokens

    def exhausted(self) -> bool:
        return self.budget_tokens is not None and self.tokens >= self.budget_tokens

    def add_generation(self, meter: UsageMeter) -> None:
        usage = meter.snapshot()
        self.calls += int(usage["calls"] or 0)
        self.prompt_tokens += int(usage["prompt_tokens"] or 0)
        self.completion_tokens += int(usage["completion_tokens"] or 0)
        self.cost_usd += float(usage["cost_usd"] or 0.0)

    def take_forward(self, lengths: dict[str, int]) -> list[str]:
        """The ids (in order) whose forward passes fit in the budget left; their tokens are counted."""
        kept: list[str] = []
        for example_id, length in lengths.items():
            if self.budget_tokens is not None and self.tokens + length > self.budget_tokens:
                self.stopped = (f"teacher budget of {self.budget_tokens} tokens reached: forward passes for "
                                f"{len(kept)} of {len(lengths)} items")
                break
            self.forward_tokens += length
            kept.append(example_id)
        return kept

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens": self.tokens}


@dataclass
class PrimedTeacher:
    """One arm's teacher signal: the texts the student learns (None: the reference solutions), the teacher's
    distributions on them (top-k on aligned answer tokens, or the published full-vocabulary logits), which items
    have a signal (None: all of them; fewer when filtered or stopped by a budget) and what it cost."""

    targets: dict[str, str] | None = None
    topk: TopKCache | None = None
    full_logits: FullLogitsStore | None = None
    ids: set[str] | None = None
    usage: TeacherUsage | None = None

    @property
    def distills(self) -> bool:
        return self.topk is not None or self.full_logits is not None

def published_answer(example: Example) -> str:
    """The labels of the published recipe: the dataset's solution field verbatim where the task keeps it (GSM8K:
    with `<<...>>` annotations and `#### N`), else the worked solution."""
    return str(example.extra.get("dataset_solution") or example.solution)


@dataclass
class TeacherPriming:
    """The teacher-signal step of one RP-KD run: its options, which signal, and in which wording the teacher is
    primed."""

    config: RPKDConfig
    signal: Signal
    wording: Wording

    @property
    def train_config(self):
        return self.config.train

    def prime(self, ctx: RunContext, arm: str, examples: list[Example]) -> PrimedTeacher:
        """The arm's teacher signal, by `method.signal`:
        published        full-vocabulary logits of the raw `priming + question` (no solution), as published;
        reference        top-k logits of the primed teacher forced through the reference solution;
        primed_response  the primed teacher writes a solution, the scorer keeps the right ones, and the teacher's
                         top-k logits on its own kept solution go with it;
        sequence         the kept solutions only (text; API teachers).
        With `method.teacher_token_budget`, priming stops once the teacher has read and written that many tokens,
        and the arm trains on the items primed by then; its usage (and where it stopped) is saved either way."""
        usage_path = f"artifacts/{arm}/teacher_usage.json"
        if ctx.store.phase_done(f"prime_{arm}") and ctx.store.exists(usage_path):
            primed = self.load(ctx, arm)
            if primed is not None:
                return primed
        priming = priming_for(arm, self.wording, self.config.custom_priming)
        ctx.store.write_json(f"artifacts/{arm}/priming.json", {"wording": self.wording.value, "text": priming.text,
                                                                "raw_prefix": priming.raw_prefix})
        usage = TeacherUsage(budget_tokens=self.config.teacher_token_budget)
        primed = PrimedTeacher(usage=usage)
        if self.signal in (Signal.sequence, Signal.primed_response):
            primed.targets = self.teacher_solutions(ctx, arm, priming, examples, usage)
            primed.ids = set(primed.targets)
        if self.signal is Signal.published:
            primed.full_logits, primed.ids = self._published_logits(ctx, arm, priming, examples, usage)
        elif self.signal is not Signal.sequence:
            primed.topk = self._teacher_topk(ctx, arm, priming, examples, primed.targets, usage)
            primed.ids = set(primed.topk.entries)
        usage.primed_items = len(primed.ids or ())
        ctx.store.write_json(usage_path, usage.to_dict())
        if primed.targets is not None:
            ctx.store.write_json(f"artifacts/{arm}/targets.json", primed.targets)
        ctx.store.mark_phase_done(f"prime_{arm}", {"signal": self.signal.value, "items": usage.primed_items,
                                                   "k": self.config.top_k, **usage.to_dict()})
        if usage.stopped:
            logger.warning("%s: %s", arm, usage.stopped)
        return primed

    def load(self, ctx: RunContext, arm: str) -> PrimedTeacher | None:
        """A finished priming phase, read back (None when one of its files is missing: prime again)."""
        from bench.training.teacher_logits import FullLogitsStore, TopKCache

        usage = TeacherUsage(**{k: v for k, v in ctx.store.read_json(f"artifacts/{arm}/teacher_usage.json").items()
                                if k != "tokens"})
        primed = PrimedTeacher(usage=usage)
        if ctx.store.exists(f"artifacts/{arm}/targets.json"):
            primed.targets = ctx.store.read_json(f"artifacts/{arm}/targets.json")
            primed.ids = set(primed.targets)
        if self.signal is Signal.published:
            primed.full_logits = FullLogitsStore(ctx.store.path(f"artifacts/{arm}/teacher_logits"))
            primed.ids = set(ctx.store.read_json(f"artifacts/{arm}/primed_ids.json"))
        elif self.signal is not Signal.sequence:
            path = ctx.store.path(f"artifacts/{arm}/teacher_topk.pt")
            if not path.exists():
                return None
            primed.topk = TopKCache.load(path)
            primed.ids = set(primed.topk.entries)
        return primed

    def _local_teacher(self, ctx: RunContext) -> LocalLM:
        """The teacher's model and tokenizer, for the signals that read its logits (same vocabulary as the student)."""
        if ctx.model_config("teacher").backend != "hf":
            raise ValueError(f"method.signal={self.signal.value} needs the teacher's logits: use a local teacher "
                             "(backend=hf), method.signal=reference or primed_response (a vLLM-served teacher "
                             "works there), or method.signal=sequence for API teachers")
        from bench.training.teacher_logits import check_same_tokenizer

        teacher = ctx.local_lm("teacher")
        check_same_tokenizer(ctx.tokenizer("student"), teacher.tokenizer)
        return teacher

    def _teacher_topk(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                      targets: dict[str, str] | None, usage: TeacherUsage) -> TopKCache:
        """Top-k logits of the primed teacher on the answer tokens the student will learn (aligned, same ids); from
        a local teacher's forward passes, or from a served teacher's prompt log-probs (backend=openai)."""
        from bench.training.kd import aligned_sequence, answer_ids
        from bench.training.teacher_logits import compute_topk

        served = ctx.model_config("teacher").backend == "openai"
        teacher = None if served else self._local_teacher(ctx)
        tokenizer = ctx.tokenizer("student") if teacher is None else teacher.tokenizer
        max_length = self.train_config.max_length + 512  # room for the priming
        messages = {e.id: priming.apply(ctx.task.user_message(e)) for e in examples
                    if targets is None or e.id in targets}
        texts = {e.id: targets[e.id] if targets is not None else ctx.task.training_target(e)
                 for e in examples if e.id in messages}
        sequences = {i: aligned_sequence(tokenizer, messages[i], answer_ids(tokenizer, texts[i]), max_length)
                     for i in messages}
        if teacher is None:
            cache = self._served_topk(ctx, arm, tokenizer, messages, texts, sequences, usage)
        else:
            kept = usage.take_forward({i: len(s.input_ids) for i, s in sequences.items()})
            if not kept:
                raise ValueError(f"{arm}: the teacher token budget leaves no item to prime ({usage.stopped})")
            cache = compute_topk(teacher.model, {i: sequences[i] for i in kept}, self.config.top_k,
                                 self.config.teacher_batch_size, tokenizer.pad_token_id, progress=ctx.progress,
                                 temperature=self.config.temperature)
        path = ctx.store.path(f"artifacts/{arm}/teacher_topk.pt")
        cache.save(path)
        usage.cache_bytes = path.stat().st_size
        return cache

    # ------------------------------------------------------------------ served teacher (vLLM prompt_logprobs)
    def check_served_teacher(self, ctx: RunContext, roles: tuple[str, ...]) -> None:
        """A served teacher's top-k are vLLM's prompt log-probs at T=1 (bench/training/served_logprobs.py): refuse a
        loss they cannot give before any teacher call, not after priming."""
        if "teacher" not in roles or ctx.model_config("teacher").backend != "openai" or self.config.alpha == 1.0 \
                or self.signal not in (Signal.reference, Signal.primed_response):
            return
        from bench.training.served_logprobs import served_kd_problem

        problem = served_kd_problem(self.config.topk_tail, self.config.temperature)
        if problem:
            raise ValueError(problem)

    def _served_topk(self, ctx: RunContext, arm: str, tokenizer, messages: dict[str, str], texts: dict[str, str],
                     sequences: dict[str, AlignedSequence], usage: TeacherUsage) -> TopKCache:
        """The arm's TopKCache from the served teacher, one request per item, each kept as it arrives (a killed run
        re-asks only the missing ones); the sequences are the student tokenizer's, which the server must share."""
        from bench.models.openai_api import OpenAIChatModel
        from bench.training.served_logprobs import ServedTeacher, check_served_tokenizer, fill_served_topk
        from bench.training.teacher_logits import TopKItemStore

        api = OpenAIChatModel.from_config(ctx.model_config("teacher"))
        teacher = ServedTeacher(api)
        first = next(iter(sequences))
        check_served_tokenizer(teacher, tokenizer, messages[first], texts[first],
                               max(len(s.input_ids) for s in sequences.values()))
        left = None if usage.budget_tokens is None else usage.budget_tokens - usage.tokens
        store = TopKItemStore(ctx.store.path(f"artifacts/{arm}/served_topk"))
        cache, served = fill_served_topk(teacher, sequences, store, self.config.top_k, self.config.temperature, left,
                                         ctx.progress, vocab_size=len(tokenizer))
        usage.calls += served.calls
        usage.prompt_tokens += served.prompt_tokens
        usage.completion_tokens += served.completion_tokens
        usage.cost_usd += api.price.cost(served.prompt_tokens, served.completion_tokens)
        usage.stopped = served.stopped or usage.stopped
        if not cache.entries:
            raise ValueError(f"{arm}: the teacher token budget leaves no item to prime ({usage.stopped})")
        return cache

    def _published_logits(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                          usage: TeacherUsage) -> tuple[FullLogitsStore, set[str]]:
        """Full-vocabulary teacher logits over the raw primed question at the positions the published loss reads."""
        from bench.training.published import published_teacher_ids
        from bench.training.teacher_logits import FullLogitsStore, check_disk_room, compute_full_logits

        store = FullLogitsStore(ctx.store.path(f"artifacts/{arm}/teacher_logits"))
        teacher = self._local_teacher(ctx)
        tokenizer = teacher.tokenizer
        sequences = {}
        for example, item in zip(examples, self.published_items(tokenizer, examples)):
            teacher_ids = published_teacher_ids(tokenizer, priming.apply(example.question))
            sequences[item.example_id] = (teacher_ids, min(len(teacher_ids), item.positions))
        kept = usage.take_forward({i: len(ids) for i, (ids, _) in sequences.items()})
        if not kept:
            raise ValueError(f"{arm}: the teacher token budget leaves no item to prime ({usage.stopped})")
        sequences = {i: sequences[i] for i in kept}
        vocab = teacher.model.get_output_embeddings().weight.shape[0]
        needed = sum(n for _, n in sequences.values()) * vocab * 2  # float16
        logger.info("%s: storing the teacher's full-vocabulary logits, %.2f GiB", arm, needed / 2**30)
        check_disk_room(store.directory, needed)
        compute_full_logits(teacher.model, sequences, store, self.config.teacher_batch_size,
                            tokenizer.pad_token_id, progress=ctx.progress)
        usage.cache_bytes = sum(path.stat().st_size for path in store.directory.glob("*.pt"))
        ctx.store.write_json(f"artifacts/{arm}/primed_ids.json", kept)
        return store, set(kept)

    def published_items(self, tokenizer, examples: list[Example]) -> list[PublishedItem]:
        """The published recipe's training items: the raw question and the dataset's solution field."""
        from bench.training.published import published_item

        return [published_item(tokenizer, e.id, e.question, published_answer(e), self.train_config.max_length)
                for e in examples]

    def teacher_solutions(self, ctx: RunContext, arm: str, priming: Priming, examples: list[Example],
                           usage: TeacherUsage) -> dict[str, str]:
        """The primed teacher's solutions, kept when the scorer accepts them (method.filter_correct). Under a token
        budget they are generated a batch at a time, stopping once the budget is spent."""
        teacher = ctx.teacher
        params = ctx.sampling("teacher")
        requests = [GenerationRequest((Message("user", priming.apply(ctx.task.user_message(e))),), params)
                    for e in examples]
        meter = UsageMeter(budget_tokens=usage.budget_tokens)
        chunk = len(requests) if usage.budget_tokens is None else max(1, ctx.model_config("teacher").batch_size)
        texts: list[str] = []
        for start in range(0, len(requests), chunk):
            if meter.exhausted():
                usage.stopped = (f"teacher budget of {usage.budget_tokens} tokens reached: solutions for "
                                 f"{len(texts)} of {len(examples)} items")
                break
            completions = generate_metered(teacher, requests[start:start + chunk], meter,
                                           ctx.store.path(f"artifacts/{arm}/{FAILED_USAGE_LEDGER}"), f"prime_{arm}",
                                           progress=ctx.progress)  # a failure's spend: the ledger
            texts += [completion.text for completion in completions]
        usage.add_generation(meter)
        generated = examples[:len(texts)]
        verdicts = ctx.task.score_many(generated, texts, progress=ctx.progress)
        kept = {e.id: text for e, text, v in zip(generated, texts, verdicts)
                if v.passed or not self.config.filter_correct}
        ctx.store.write_jsonl(f"artifacts/{arm}/teacher_solutions.jsonl",
                              ({"task_id": e.id, "text": t, "status": v.status.value, "kept": e.id in kept}
                               for e, t, v in zip(generated, texts, verdicts)))
        logger.info("%s: kept %d of %d teacher solutions", arm, len(kept), len(generated))
        if not kept:
            raise ValueError(f"{arm}: the scorer accepted none of the {len(generated)} teacher solutions, so there "
                             "is nothing to train on; use a stronger teacher, more items, or "
                             "method.filter_correct=false")
        return kept
