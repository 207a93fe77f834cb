"""`method=cd`: Concept Distillation (arXiv 2408.09365) — prompt-time distillation, no weights change.

initialize: the student answers `train_sample` train items with the base prompt; wrong answers become mistakes.
induce:     the teacher explains batches of mistakes and writes rules; malformed replies are re-asked, then
            skipped with a logged reason; near-duplicate rules are merged; a budget cap ends induction cleanly.
deduce:     rules are added to the base prompt and kept only if they pass an acceptance test on the *validation*
            items (default: a one-sided exact McNemar test on the items the prompts disagree on, so one lucky
            item cannot admit a rule; see cd_rules.judge); the kept rules are merged into the final prompt.
            Each candidate's gain, wins/losses, p-value and decision go to candidate_rules.jsonl.
evaluate:   base and final prompt on the same *test* items, with a paired test.
Every phase writes its artifacts and a done-marker, so a killed run resumes after the last finished phase.
Selection only ever sees train and validation items.

Other prompt optimizers (planned; the paper compares CD against automatic prompt optimizers). The slot for one in
the head-to-head is a Method that learns a system prompt from the same student on the same `splits.json` train
and validation items, with the harness's scorer (`task.score`) as its metric, and writes `final_prompt.txt` to its
run folder; that prompt is then scored exactly as CD's is, by `ConceptDistillation.evaluate` (base vs. learned
prompt on the same test items, paired test). `method=cd method.prompt_from=<run folder>` already does that last
step for any prompt file, so an optimizer run elsewhere can be compared before it has its own Method. Candidates:
DSPy `InferRules` (the nearest peer: teacher-induced rules filtered on a val set), `MIPROv2` (instructions only:
max_bootstrapped_demos=0, max_labeled_demos=0, or its demos rendered into the prompt text, else it gets few-shot
turns CD does not), and `COPRO` (instruction search). Their prompt model plays CD's teacher and its cost is
recorded like `teacher_usage.json`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.context import RunContext
from bench.evaluation import EvalResult, compare
from bench.config import CDConfig, Merge, Selection
from bench.methods.base import Headline, Method, MethodResult, best_arm, register_method, summary_row
from bench.methods.cd_rules import (ACCEPTANCES, TEACHER_SYSTEM, MalformedReply, Mistake, Rule, deduplicate,
                                    induction_prompt, judge, merge_prompt_request, parse_merged_prompt,
                                    parse_teacher_reply, prompt_with_rules)
from bench.models.base import GenerationRequest, Message, SamplingParams
from bench.models.cost import FAILED_USAGE_LEDGER, UsageMeter, generate_metered

logger = logging.getLogger(__name__)

Batches = list[tuple[int, list[Mistake]]]  # mistake batches for the teacher, each with its index

SELECTIONS = tuple(s.value for s in Selection)  # the schema's choices, for configs built in code
MERGES = tuple(m.value for m in Merge)
RETRY_TEMPERATURE = 0.7


def _accuracy(result: EvalResult) -> float:
    return result.metrics["accuracy"]["mean"]


def load_prompt(source: str) -> str:
    """A learned prompt from a CD run folder (its final_prompt.txt) or a plain text file."""
    path = Path(source)
    if path.is_dir():
        path = path / "final_prompt.txt"
    if not path.is_file():
        raise FileNotFoundError(f"cd.prompt_from={source!r}: no prompt file (expected a CD run folder with "
                                "final_prompt.txt, or a text file)")
    return path.read_text(encoding="utf-8").strip()


@register_method
class ConceptDistillation(Method):
    name = "cd"
    config_class = CDConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if config.selection not in SELECTIONS:
            raise ValueError(f"method.selection must be one of {SELECTIONS}, got {config.selection!r}")
        if config.merge not in MERGES:
            raise ValueError(f"method.merge must be one of {MERGES}, got {config.merge!r}")
        if config.acceptance not in ACCEPTANCES:
            raise ValueError(f"method.acceptance must be one of {ACCEPTANCES}, got {config.acceptance!r}")
        if not 0 < config.acceptance_p <= 1:
            raise ValueError(f"method.acceptance_p must be in (0, 1], got {config.acceptance_p}")
        if config.budget_tokens is not None and config.budget_tokens < 1:
            raise ValueError(f"method.budget_tokens must be >= 1 (or null), got {config.budget_tokens}")
        for knob in ("train_sample", "max_mistakes", "mistakes_per_call", "rules_per_call", "calls_per_round",
                     "max_rules", "min_gain_items"):
            if getattr(config, knob) < 1:
                raise ValueError(f"method.{knob} must be >= 1, got {getattr(config, knob)}")

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("student",) if self.config.prompt_from else ("student", "teacher")

    def headline(self, rows: list[dict[str, Any]]) -> Headline:
        """The learned (or transferred) prompt's test accuracy, not its gain over the base prompt: the base prompt's
        accuracy is the same in every run of a sweep over CD's options."""
        return best_arm(rows, lambda arm: arm == "CD prompt")

    # ------------------------------------------------------------------ driver
    def run(self, ctx: RunContext) -> MethodResult:
        base_prompt = self._base_prompt(ctx)
        if self.config.prompt_from:
            final_prompt = load_prompt(self.config.prompt_from)
            ctx.store.write_text("final_prompt.txt", final_prompt + "\n")
            phase_metrics: dict[str, Any] = {"transfer_from": self.config.prompt_from}
        else:
            mistakes = self.initialize(ctx, base_prompt)
            rules, usage = self.induce(ctx, mistakes)
            final_prompt, phase_metrics = self.deduce(ctx, base_prompt, rules)
            phase_metrics.update(mistakes=len(mistakes), candidate_rules=len(rules), teacher_usage=usage)
        return self.evaluate(ctx, base_prompt, final_prompt, phase_metrics)

    def _base_prompt(self, ctx: RunContext) -> str:
        return self.config.base_prompt if self.config.base_prompt is not None else ctx.task.config.system_prompt

    def _teacher_params(self, ctx: RunContext, seed_offset: int = 0) -> SamplingParams:
        base = ctx.sampling("teacher", max_new_tokens=self.config.teacher_max_new_tokens,
                            temperature=self.config.teacher_temperature)
        # A greedy teacher would repeat a malformed reply word for word: retries sample instead.
        temperature = base.temperature if seed_offset == 0 or base.temperature > 0 else RETRY_TEMPERATURE
        return SamplingParams(max_new_tokens=base.max_new_tokens, temperature=temperature, top_p=base.top_p,
                              seed=base.seed + seed_offset)

    # ------------------------------------------------------------------ phase 1
    def initialize(self, ctx: RunContext, base_prompt: str) -> list[Mistake]:
        if ctx.store.phase_done("initialize"):
            logger.info("initialize: resuming from mistakes.jsonl")
            return [Mistake(**record) for record in ctx.store.read_jsonl("mistakes.jsonl")]
        examples = ctx.examples("train", limit=self.config.train_sample)
        result = ctx.evaluate(ctx.model("student"), examples, split="train", name="initialize_train",
                              system_prompt=base_prompt)
        by_id = {example.id: example for example in examples}
        mistakes = [
            Mistake(task_id=s.task_id, question=by_id[s.task_id].question, student_output=s.completion,
                    reference=ctx.task.reference_text(by_id[s.task_id]), status=s.status, detail=s.detail)
            for s in result.samples if not s.passed
        ][: self.config.max_mistakes]
        ctx.store.write_jsonl("mistakes.jsonl", (asdict(m) for m in mistakes))
        ctx.store.mark_phase_done("initialize", {"train_items": len(examples), "mistakes": len(mistakes),
                                                 "train_accuracy": result.metrics["accuracy"]["mean"]})
        logger.info("initialize: %d mistakes on %d train items", len(mistakes), len(examples))
        return mistakes

    # ------------------------------------------------------------------ phase 2
    def induce(self, ctx: RunContext, mistakes: list[Mistake]) -> tuple[list[Rule], dict]:
        if ctx.store.phase_done("induce"):
            logger.info("induce: resuming from candidate_rules.jsonl")
            return ([Rule(**r) for r in ctx.store.read_jsonl("candidate_rules.jsonl")],
                    ctx.store.read_json("teacher_usage.json"))
        size = self.config.mistakes_per_call
        batches = [mistakes[i:i + size] for i in range(0, len(mistakes), size)]
        meter = UsageMeter(self.config.budget_usd, self.config.budget_tokens)
        rules: list[Rule] = []
        log: list[dict] = []
        pending = list(enumerate(batches))
        attempt, budget_spent = 0, False
        while pending and attempt <= self.config.malformed_retries and not budget_spent:
            pending, budget_spent = self._induction_attempt(ctx, meter, pending, attempt, rules, log)
            attempt += 1
        if not budget_spent:
            log += [{"batch": index, "attempt": attempt - 1, "outcome": "skipped: still malformed after retries"}
                    for index, _ in pending]
        unique = deduplicate(rules, self.config.dedup_similarity)
        usage = meter.snapshot()
        ctx.store.write_jsonl("candidate_rules.jsonl", (r.to_dict() for r in unique))
        ctx.store.write_jsonl("induction_log.jsonl", log)
        ctx.store.write_json("teacher_usage.json", usage)
        ctx.tracker.log({"induce": {"rules": len(unique), "teacher_cost_usd": usage["cost_usd"]}})
        ctx.store.mark_phase_done("induce", {"rules": len(unique), "raw_rules": len(rules), **usage})
        logger.info("induce: %d rules (%d before deduplication) from %d teacher calls", len(unique), len(rules),
                    usage["calls"])
        return unique, usage

    def _induction_attempt(self, ctx: RunContext, meter: UsageMeter, pending: Batches, attempt: int,
                           rules: list[Rule], log: list[dict]) -> tuple[Batches, bool]:
        """One pass over the pending mistake batches, `calls_per_round` teacher calls at a time (the budget is checked
        between rounds). Adds the rules and log lines it makes; returns (the batches whose reply was malformed, to ask
        again, and whether the budget ran out, which ends induction with the rules so far)."""
        malformed: Batches = []
        for start in range(0, len(pending), self.config.calls_per_round):
            if meter.exhausted():
                log += [{"batch": index, "attempt": attempt, "outcome": "skipped: budget exhausted",
                         "cost_usd": meter.snapshot()["cost_usd"]} for index, _ in pending[start:]]
                logger.warning("induce: teacher budget reached ($%s, %s tokens); stopping with %d rules",
                               meter.budget_usd, meter.budget_tokens, len(rules))
                return malformed, True
            round_ = pending[start:start + self.config.calls_per_round]
            requests = [GenerationRequest(
                (Message("system", TEACHER_SYSTEM),
                 Message("user", induction_prompt(batch, ctx.task.description, self.config.rules_per_call))),
                self._teacher_params(ctx, seed_offset=attempt)) for _, batch in round_]
            completions = generate_metered(ctx.model("teacher"), requests, meter, ctx.store.path(FAILED_USAGE_LEDGER),
                                           "induce", progress=ctx.progress)  # a failure's spend: the ledger
            for (index, batch), completion in zip(round_, completions):
                try:
                    explanation, texts = parse_teacher_reply(completion.text, self.config.rules_per_call)
                except MalformedReply as error:
                    log.append({"batch": index, "attempt": attempt, "outcome": f"malformed: {error}",
                                "reply": completion.text[:2000]})
                    malformed.append((index, batch))
                    continue
                log.append({"batch": index, "attempt": attempt, "outcome": f"{len(texts)} rules"})
                rules += [Rule(rule_id=f"r{index}.{k}", text=text, explanation=explanation,
                               source_task_ids=[m.task_id for m in batch]) for k, text in enumerate(texts)]
        return malformed, False

    # ------------------------------------------------------------------ phase 3
    def deduce(self, ctx: RunContext, base_prompt: str, rules: list[Rule]) -> tuple[str, dict[str, Any]]:
        if ctx.store.phase_done("deduce"):
            logger.info("deduce: resuming from final_prompt.txt")
            return (ctx.store.path("final_prompt.txt").read_text(encoding="utf-8").strip(),
                    ctx.store.read_json("phases/deduce.done"))
        validation = ctx.examples("validation", limit=self.config.validation_limit)
        if not validation:
            raise ValueError(f"task {ctx.task.name} has an empty validation split; CD selects rules on it "
                             "(set task.validation_size > 0)")
        student = ctx.model("student")

        def run(prompt: str, name: str) -> EvalResult:
            return ctx.evaluate(student, validation, split="validation", name=f"deduce/{name}",
                                system_prompt=prompt)

        def accuracy(prompt: str, name: str) -> float:
            return _accuracy(run(prompt, name))

        base = current = run(base_prompt, "base")
        base_accuracy = _accuracy(base)
        kept: list[Rule] = []
        if self.config.selection == "independent":
            for rule in rules:
                self._judge(rule, base, run(prompt_with_rules(base_prompt, [rule.text]), rule.rule_id))
            ranked = sorted((r for r in rules if r.accepted), key=lambda r: -r.gain)
            kept = ranked[: self.config.max_rules]
            for rule in ranked[self.config.max_rules:]:
                rule.decision += f"; not kept: {self.config.max_rules} rules with larger gains fill max_rules"
        else:  # greedy cumulative: each rule must help on top of those already kept
            for rule in rules:
                if len(kept) >= self.config.max_rules:
                    rule.decision = f"not tested: max_rules={self.config.max_rules} already kept"
                    continue
                candidate = run(prompt_with_rules(base_prompt, [r.text for r in kept + [rule]]), rule.rule_id)
                if self._judge(rule, current, candidate):
                    kept.append(rule)
                    current = candidate
        for rule in kept:
            rule.kept = True
        final_prompt = prompt_with_rules(base_prompt, [r.text for r in kept])
        final_accuracy = accuracy(final_prompt, "final") if kept else base_accuracy
        merge_note = "list"
        if kept and self.config.merge == "teacher":
            final_prompt, final_accuracy, merge_note = self._teacher_merge(ctx, final_prompt, final_accuracy,
                                                                           accuracy)
        ctx.store.write_jsonl("candidate_rules.jsonl", (r.to_dict() for r in rules))
        ctx.store.write_text("final_prompt.txt", final_prompt + "\n")
        summary = {"validation_items": len(validation), "validation_base_accuracy": base_accuracy,
                   "validation_final_accuracy": final_accuracy, "kept_rules": len(kept), "merge": merge_note,
                   "acceptance": self._acceptance_settings(),
                   "rule_tests": [{key: getattr(r, key) for key in ("rule_id", "gain", "wins", "losses", "p_value",
                                                                    "accepted", "kept", "decision")}
                                  for r in rules]}
        ctx.store.mark_phase_done("deduce", summary)
        logger.info("deduce: kept %d of %d rules; validation accuracy %.3f -> %.3f", len(kept), len(rules),
                    base_accuracy, final_accuracy)
        return final_prompt, summary

    def _judge(self, rule: Rule, current: EvalResult, candidate: EvalResult) -> bool:
        """Test `rule` (the candidate prompt) against the current prompt on the same validation items; record the
        evidence on the rule and return whether it was accepted."""
        rule.validation_accuracy = _accuracy(candidate)
        verdict = judge(current.outcomes, candidate.outcomes, rule.validation_accuracy - _accuracy(current),
                        self.config.acceptance, min_gain=self.config.min_gain, p_threshold=self.config.acceptance_p,
                        min_items=self.config.min_gain_items)
        rule.gain, rule.wins, rule.losses = verdict.gain, verdict.wins, verdict.losses
        rule.p_value, rule.accepted, rule.decision = verdict.p_value, verdict.accepted, verdict.decision
        return verdict.accepted

    def _acceptance_settings(self) -> dict[str, Any]:
        return {"mode": self.config.acceptance, "p": self.config.acceptance_p, "min_gain": self.config.min_gain,
                "min_gain_items": self.config.min_gain_items, "test": "one-sided exact McNemar"}

    def _teacher_merge(self, ctx: RunContext, listed: str, listed_accuracy: float, accuracy) -> tuple[str, float, str]:
        """Let the teacher consolidate the kept rules; keep its version only if validation accuracy holds."""
        request = GenerationRequest((Message("user", merge_prompt_request(listed)),), self._teacher_params(ctx))
        reply = ctx.model("teacher").generate([request], progress=False)[0].text
        try:
            merged = parse_merged_prompt(reply)
        except MalformedReply as error:
            logger.warning("deduce: teacher merge unusable (%s); keeping the rule list", error)
            return listed, listed_accuracy, f"list (teacher merge malformed: {error})"
        merged_accuracy = accuracy(merged, "final_merged")
        if merged_accuracy >= listed_accuracy:
            return merged, merged_accuracy, "teacher"
        return listed, listed_accuracy, "list (teacher merge scored lower on validation)"

    # ------------------------------------------------------------------ phase 4
    def evaluate(self, ctx: RunContext, base_prompt: str, final_prompt: str,
                 phase_metrics: dict[str, Any]) -> MethodResult:
        split, examples = ctx.test_examples()
        student = ctx.model("student")
        base: EvalResult = ctx.evaluate(student, examples, split=split, name="test_base_prompt",
                                        system_prompt=base_prompt)
        final: EvalResult = ctx.evaluate(student, examples, split=split, name="test_cd_prompt",
                                         system_prompt=final_prompt)
        paired = compare(base, final, seed=ctx.seed)
        metrics = {"split": split, "base_prompt": base.metrics, "cd_prompt": final.metrics,
                   "paired": paired.to_dict(), "final_prompt": final_prompt, **phase_metrics}
        rows = [summary_row("base prompt", base.metrics),
                summary_row("CD prompt", final.metrics, diff=paired.diff, mcnemar_p=paired.mcnemar_p,
                            bootstrap_p=paired.bootstrap_p)]
        return MethodResult(metrics=metrics, rows=rows)
