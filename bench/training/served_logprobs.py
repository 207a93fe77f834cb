"""Token-level KD from a served teacher: vLLM's prompt log-probs fill the same top-k teacher cache
(teacher_logits.TopKCache) that a local teacher's forward pass fills, so a teacher too large for this machine (a 70B
model served with tensor parallelism) can be distilled token by token.

The request (vllm/entrypoints/openai/completion/protocol.py, CompletionRequest): POST /v1/completions with `prompt`
as token ids, so the server scores exactly the ids the student learns (no re-tokenization to align), `max_tokens: 1`
(the fewest every vLLM version accepts), `temperature: 0`, and the vLLM extension `prompt_logprobs: k` (at most the
server's --max-logprobs, 20 by default). vLLM skips its prefix cache for such requests by itself.

The response (same file: CompletionResponseChoice.prompt_logprobs is list[dict[int, Logprob] | None]; each dict is
built by vllm/logprobs.py append_logprobs_for_next_position, and completion/serving.py clamps -inf to -9999.0):
`choices[0].prompt_logprobs` has one entry per prompt token. The first is null (nothing predicts it). Entry i maps
token id, a string in JSON, to {"logprob", "rank", "decoded_token"} for the distribution that predicts prompt token
i: the prompt token itself first, with its rank in the whole vocabulary, then the top k with ranks 1..k. A token is a
key once, so an entry has k keys when the prompt token is in the top k and k + 1 when it is not.

What those numbers give. vLLM computes prompt log-probs as log_softmax of the raw logits, with no temperature and no
logits processor (vllm/v1/worker/gpu/sample/prompt_logprob.py): lp_i = z_i - logsumexp(z).
- The tempered top-k shape is exact: softmax over the top k of z/T is softmax of lp/T, the row constant cancels.
  The cache stores lp - max(lp) = z - max(z) where a local cache stores z, and every loss reads those values only
  through that softmax (kd.topk_bucket_log_probs), so `topk_tail=renormalize` is exactly what a local teacher gives.
- The tempered mass outside the top k, which `rest_bucket` needs, is exact only at T = 1: there it is
  1 - sum of the top-k probabilities (cache_entry). At T != 1 it is sum_{j outside} p_j^(1/T) / sum_all p^(1/T),
  and the server tells only the total R = sum_{j outside} p_j, not how R spreads over the other V - k tokens (each
  at most the k-th probability p_k). That spread decides the answer: concentrated on floor(R / p_k) tokens it is
  smallest, uniform it is largest when T > 1 (tempered_rest_bounds). On Zipf-like rows over 128k tokens at T = 5.94
  with k = 20 the bounds come out near [0.6-0.9, 0.999], so the share the top k keep, 1 - rest, which scales every
  top-k bucket of the loss, is known only within a factor of 100 or more. So a served cache at T != 1 holds no rest
  mass, and `rest_bucket` is refused before any request (served_kd_problem).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import openai
import torch
from tqdm.auto import tqdm

from bench.models.openai_api import OpenAIChatModel, _describe_status_error
from bench.training.kd import AlignedSequence, prompt_ids
from bench.training.teacher_logits import TopKCache, TopKItemStore

logger = logging.getLogger(__name__)

LOGPROB_FLOOR = -9999.0  # vLLM's stand-in for -inf (JSON has none); a floor also keeps 0 * log 0 out of the KL
_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)  # an empty rest bucket, as kd clamps it


class ServedLogprobsError(ValueError):
    """The server's answer is not vLLM's prompt_logprobs shape, or does not describe the token ids that were sent."""


@dataclass(frozen=True)
class TopKRows:
    """The teacher's top k at each answer position, in rank order: vocabulary ids int32 [L, k] and the server's
    log-probs at temperature 1 (float64 [L, k], floored at LOGPROB_FLOOR)."""

    indices: torch.Tensor
    logprobs: torch.Tensor


def parse_prompt_logprobs(response: Mapping[str, Any], prompt: Sequence[int], answer_start: int, k: int) -> TopKRows:
    """Rows predicting prompt[answer_start:], the same positions teacher_logits.compute_topk reads from a local
    teacher (logits at answer_start - 1 + j predict answer token j; vLLM files that distribution under token j)."""
    if not 1 <= answer_start <= len(prompt):
        raise ValueError(f"answer_start={answer_start} is outside a prompt of {len(prompt)} tokens")
    choices = response.get("choices") if isinstance(response, Mapping) else None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, Mapping) for c in choices):
        raise ServedLogprobsError(f"the server's answer has no choices list: {_excerpt(response)}")
    choice = min(choices, key=lambda c: c.get("index") or 0)
    entries = choice.get("prompt_logprobs")
    if entries is None:
        raise ServedLogprobsError("the server answered without prompt_logprobs: that is a vLLM extension of "
                                  "/v1/completions (OpenAI, `transformers serve` and others ignore it); serve the "
                                  "teacher with vLLM")
    if not isinstance(entries, list) or len(entries) != len(prompt):
        count = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise ServedLogprobsError(f"prompt_logprobs has {count} entries for the {len(prompt)} token ids sent: the "
                                  "server scored other tokens (did it add a BOS or truncate the prompt?)")
    echoed = choice.get("prompt_token_ids")
    if echoed is not None and list(echoed) != list(prompt):
        raise ServedLogprobsError("the server's prompt_token_ids differ from the token ids sent")
    indices, logprobs = [], []
    for position in range(answer_start, len(prompt)):
        tokens, values = _top_k(entries[position], prompt[position], position, k)
        indices.append(tokens)
        logprobs.append(values)
    return TopKRows(torch.tensor(indices, dtype=torch.int32).reshape(-1, k),
                    torch.tensor(logprobs, dtype=torch.float64).reshape(-1, k))


def _top_k(entry: Any, actual: int, position: int, k: int) -> tuple[list[int], list[float]]:
    """The k best tokens of one entry, by rank (by log-prob where a server gives no ranks); the prompt token's own
    entry, added when it is outside the top k, is left out, but must be there: it proves the alignment."""
    if not isinstance(entry, Mapping) or not entry:
        raise ServedLogprobsError(f"prompt_logprobs[{position}] is {_excerpt(entry)}, not a token -> log-prob map")
    candidates: list[tuple[int, float, int | None]] = []
    for key, value in entry.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ServedLogprobsError(f"prompt_logprobs[{position}] has key {key!r}, not a token id") from None
        if not isinstance(value, Mapping) or "logprob" not in value:
            raise ServedLogprobsError(f"prompt_logprobs[{position}][{key!r}] is {_excerpt(value)}, not a Logprob")
        logprob = value["logprob"]
        if logprob is not None and (not isinstance(logprob, (int, float)) or math.isnan(logprob)):
            raise ServedLogprobsError(f"prompt_logprobs[{position}][{key!r}] has logprob {logprob!r}")
        # null: how pydantic writes -inf if a server does not clamp it to -9999 as vLLM does
        rank = value.get("rank")
        candidates.append((token, LOGPROB_FLOOR if logprob is None else max(float(logprob), LOGPROB_FLOOR),
                           rank if isinstance(rank, int) and not isinstance(rank, bool) else None))
    if all(token != actual for token, _, _ in candidates):
        raise ServedLogprobsError(f"prompt_logprobs[{position}] lacks the prompt token {actual} that vLLM always "
                                  "lists: the server scored other token ids than those sent")
    if all(rank is not None for _, _, rank in candidates):
        ranked = sorted(candidates, key=lambda c: (c[2], -c[1]))
        top = [c for c in ranked if c[2] <= k][:k]  # type: ignore[operator]
    else:
        top = sorted(candidates, key=lambda c: -c[1])[:k]
    if len(top) < k:
        raise ServedLogprobsError(f"prompt_logprobs[{position}] holds {len(top)} of the top {k} tokens: ask for "
                                  f"prompt_logprobs={k} (vLLM allows up to its --max-logprobs, 20 by default)")
    return [token for token, _, _ in top], [logprob for _, logprob, _ in top]


def _excerpt(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text[:limit] + (" ..." if len(text) > limit else "")


# ------------------------------------------------------------------ what the cache can hold
def rest_temperature(kd_temperature: float | None) -> float | None:
    """The temperature at which a served cache can hold the teacher's rest mass: 1 (the server's own), else none."""
    return 1.0 if kd_temperature is not None and math.isclose(kd_temperature, 1.0, rel_tol=1e-9) else None


def served_kd_problem(topk_tail: str, kd_temperature: float) -> str | None:
    """Why the configured top-k loss cannot be trained from a served teacher (None: it can)."""
    if topk_tail != "rest_bucket" or rest_temperature(kd_temperature) is not None:
        return None
    return (f"method.topk_tail=rest_bucket needs the teacher's probability mass outside its top k at the KD "
            f"temperature T={kd_temperature:g}; a served teacher gives vLLM's prompt log-probs at T=1, from which "
            "that mass cannot be recovered at another T (bench/training/served_logprobs.py). Use "
            "method.topk_tail=renormalize (the top-k shape is exact; the tail is dropped), method.temperature=1 "
            "(the rest mass is exact), or a local teacher (backend=hf)")


def cache_entry(rows: TopKRows, temperature: float | None) -> tuple[torch.Tensor, ...]:
    """A TopKCache entry: (indices int32, values fp16[, log_rest float32]), as teacher_logits.compute_topk stores it.

    values are lp - max(lp) = z - max(z): the logits up to a per-row constant, which every top-k loss cancels.
    log_rest is given only at temperature 1 (rest_temperature), as log(1 - sum of the top-k probabilities), exact up
    to the server's float32 log-probs (an absolute error near 1e-7 on the mass)."""
    values = (rows.logprobs - rows.logprobs.amax(dim=-1, keepdim=True)).to(torch.float16)
    parts: tuple[torch.Tensor, ...] = (rows.indices.to(torch.int32), values)
    if temperature is None:
        return parts
    if rest_temperature(temperature) is None:
        raise ValueError(f"a served teacher's rest mass is known at T=1 only, not T={temperature:g}")
    top = torch.logsumexp(rows.logprobs, dim=-1).clamp(max=0.0)
    return (*parts, torch.log(-torch.expm1(top)).clamp(min=_LOG_TINY).to(torch.float32))


def tempered_rest_bounds(logprobs: torch.Tensor, vocab_size: int, temperature: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(lowest, highest) log of the teacher's mass outside its top k at `temperature`, over every way the rest of
    the vocabulary can hold what the top k leave, given only the top-k log-probs at T = 1 [L, k].

    With a = 1/T, tempered masses are proportional to p^a. The V - k other tokens hold R = 1 - sum(top-k p), each
    at most p_k, the smallest top-k probability. For T > 1, p^a is concave, so their weight sum_j p_j^a is largest
    when R is spread evenly, (V - k) (R / (V - k))^a, and smallest when it is packed into as few tokens as the cap
    allows, floor(R / p_k) tokens at p_k and one at the remainder; for T < 1 the two swap, and at T = 1 both are R.
    The rest mass is weight / (weight + sum(top-k p^a)), increasing in the weight.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = logprobs.to(torch.float64)
    outside = vocab_size - rows.shape[-1]
    if outside < 1:
        raise ValueError(f"a vocabulary of {vocab_size} leaves no token outside the top {rows.shape[-1]}")
    a = 1.0 / temperature
    log_rest = torch.log(-torch.expm1(torch.logsumexp(rows, dim=-1).clamp(max=0.0)))  # log R, -inf when R = 0
    log_cap = rows.amin(dim=-1)
    log_top = torch.logsumexp(a * rows, dim=-1)
    log_even = math.log(outside) + a * (log_rest - math.log(outside))
    full = torch.floor(torch.exp(log_rest - log_cap)).clamp(max=outside)  # tokens packed at the cap
    remainder = (log_rest.exp() - full * log_cap.exp()).clamp(min=0.0)
    log_packed = torch.logaddexp(torch.log(full) + a * log_cap, a * torch.log(remainder))
    low, high = (log_packed, log_even) if temperature >= 1 else (log_even, log_packed)
    return low - torch.logaddexp(log_top, low), high - torch.logaddexp(log_top, high)


# ------------------------------------------------------------------ the server
class ServedTeacher:
    """A teacher behind an OpenAI-compatible server that implements vLLM's prompt_logprobs (and, optionally, its
    /tokenize). Requests are retried as generation requests are (bench/models/openai_api.py): 429, 5xx, timeouts
    and dropped connections back off or wait what the server asks; other errors fail at once. The wait between
    attempts is the model's own, which a stop (another request's failure, Ctrl-C) cuts short; `sleep` replaces it
    (tests)."""

    def __init__(self, api: OpenAIChatModel, sleep: Callable[[float], None] | None = None) -> None:
        self.api = api
        self._sleep = sleep

    @property
    def model_id(self) -> str:
        return self.api.model_id

    def prompt_logprobs(self, prompt: Sequence[int], k: int, stop: threading.Event | None = None) -> dict[str, Any]:
        """The completions response, as the JSON the server sent, for one prompt of token ids; once `stop` is set, no
        further attempt is sent."""
        raw = self._retrying(lambda: self.api.client.completions.with_raw_response.create(
            model=self.api.model, prompt=list(prompt), max_tokens=1, temperature=0.0,
            extra_body={"prompt_logprobs": k}), stop)
        http = raw.http_response
        try:
            body = http.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServedLogprobsError(f"POST {http.request.url} answered {http.status_code} with a body that is "
                                      f"not a JSON object: {_excerpt(http.text)}")
        return body

    def tokenize(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """vLLM's POST /tokenize (at the server's root, beside /v1), or None when the server has none."""
        root = str(self.api.client.base_url).rstrip("/").removesuffix("/v1")
        client = self.api.client.with_options(base_url=root)
        try:
            body = self._retrying(lambda: client.post("/tokenize", cast_to=object,
                                                      body={"model": self.api.model, **request}))
        except openai.APIStatusError as error:
            if error.status_code in (400, 404, 405, 422):  # no such route (or not vLLM's request shape)
                return None
            raise
        return body if isinstance(body, dict) and isinstance(body.get("tokens"), list) else None

    def _retrying(self, call: Callable[[], Any], stop: threading.Event | None = None) -> Any:
        try:
            return self.api.with_retries(call, stop=stop, sleep=self._sleep)
        except Exception as error:
            _describe_status_error(error)
            raise


def check_served_tokenizer(teacher: ServedTeacher, tokenizer, user_message: str, answer_text: str,
                           longest: int) -> None:
    """A served teacher reads the ids the student's tokenizer made, so both must mean the same tokens, as
    check_same_tokenizer demands of a local teacher. vLLM's /tokenize checks it on one item: the chat turn (the
    teacher's own template) and the answer text must come back as the ids sent, and the longest sequence (plus the
    one generated token) must fit the served context. A server without /tokenize is trusted, with a warning."""
    chat = teacher.tokenize({"messages": [{"role": "user", "content": user_message}], "add_generation_prompt": True})
    text = teacher.tokenize({"prompt": answer_text, "add_special_tokens": False})
    if chat is None or text is None:
        logger.warning("%s has no vLLM /tokenize: cannot check that it shares the student's tokenizer and chat "
                       "template; its top-k are trusted to index the student's vocabulary", teacher.model_id)
        return
    for what, served, ours in (("the chat-templated prompt", chat["tokens"], prompt_ids(tokenizer, user_message)),
                               ("the answer text", text["tokens"],
                                tokenizer(answer_text, add_special_tokens=False).input_ids)):
        if list(served) != list(ours):
            at = next((i for i, (a, b) in enumerate(zip(served, ours)) if a != b), min(len(served), len(ours)))
            raise ValueError(f"{teacher.model_id} tokenizes {what} differently from the student (first at token "
                             f"{at}: {served[at:at + 3]} vs {ours[at:at + 3]}); token-level KD needs one tokenizer "
                             "and chat template on both sides. Use method.signal=sequence.")
    max_len = chat.get("max_model_len")
    if isinstance(max_len, int) and longest + 1 > max_len:
        raise ValueError(f"the longest teacher sequence has {longest} tokens, beyond {teacher.model_id}'s "
                         f"max_model_len={max_len} (with the one generated token); lower method.train.max_length "
                         "or serve a longer context")


# ------------------------------------------------------------------ filling the cache
@dataclass
class ServedUsage:
    """What the server billed for the cache: one request per item, its prompt read and one token written."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped: str | None = None


def fill_served_topk(teacher: ServedTeacher, sequences: dict[str, AlignedSequence], store: TopKItemStore, k: int,
                     temperature: float | None, budget_tokens: int | None = None, progress: bool = True,
                     vocab_size: int | None = None) -> tuple[TopKCache, ServedUsage]:
    """The TopKCache of `sequences` (in their order) from the server, each answer stored as it arrives: items
    already in `store` are not asked again, and their tokens still count. `budget_tokens` (what is left of a
    teacher budget) keeps the longest prefix of items whose prompt + 1 tokens fit. The cache holds the rest mass
    when `temperature` (the KD temperature) allows it (rest_temperature); otherwise, given `vocab_size`, the bounds
    of the tempered mass it leaves out are logged."""
    usage, planned, spent = ServedUsage(), [], 0
    for example_id, sequence in sequences.items():
        cost = len(sequence.input_ids) + 1
        if budget_tokens is not None and spent + cost > budget_tokens:
            usage.stopped = (f"teacher budget reached: prompt log-probs for {len(planned)} of {len(sequences)} "
                             "items")
            break
        spent += cost
        planned.append(example_id)
    rest_at = rest_temperature(temperature)
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
    fresh: dict[str, tuple[tuple[torch.Tensor, ...], dict[str, int]]] = {}  # this call's answers, as stored

    def keep(example_id: str, parts: tuple[torch.Tensor, ...], billed: dict[str, int], rows: TopKRows) -> None:
        store.put(example_id, parts, billed)
        fresh[example_id] = parts, dict(billed)
        if rest_at is None and vocab_size is not None and temperature is not None:
            bounds.append(tempered_rest_bounds(rows.logprobs, vocab_size, temperature))

    todo = [example_id for example_id in planned if example_id not in store]
    _ask_all(teacher, {i: sequences[i] for i in todo}, k, rest_at, keep, len(planned), progress)
    entries: dict[str, tuple[torch.Tensor, ...]] = {}
    for example_id in planned:  # only the answers of an earlier, interrupted call are read from disk
        entries[example_id], billed = fresh[example_id] if example_id in fresh else store[example_id]
        usage.calls += 1
        usage.prompt_tokens += billed["prompt_tokens"]
        usage.completion_tokens += billed["completion_tokens"]
    if bounds:
        low, high = (torch.cat(side) for side in zip(*bounds))
        logger.info("the teacher's mass outside its top %d at T=%g, which topk_tail=renormalize leaves out, lies "
                    "between %.3f and %.3f (medians over %d positions; exact only for a local teacher)", k,
                    temperature, float(low.exp().median()), float(high.exp().median()), low.numel())
    return TopKCache(entries, k, rest_at), usage


def _ask_all(teacher: ServedTeacher, sequences: dict[str, AlignedSequence], k: int, rest_at: float | None,
             keep: Callable[[str, tuple[torch.Tensor, ...], dict[str, int], TopKRows], None], planned: int,
             progress: bool) -> None:
    """One request per sequence, `teacher.api.max_concurrency` at a time, each answer kept as it arrives. A request
    that fails for good stops the rest: nothing new is sent (a shared stop event, set by the failing worker itself,
    so its thread cannot take the next item first), the answers already on the wire are awaited and kept, and the
    first error is raised."""
    stop = threading.Event()

    def ask(example_id: str) -> tuple[tuple[torch.Tensor, ...], dict[str, int], TopKRows] | None:
        if stop.is_set():
            return None  # not sent
        sequence = sequences[example_id]
        try:
            response = teacher.prompt_logprobs(sequence.input_ids, k, stop)
            rows = parse_prompt_logprobs(response, sequence.input_ids, sequence.answer_start, k)
        except BaseException:
            stop.set()
            raise
        billed = response.get("usage") if isinstance(response.get("usage"), dict) else {}
        spent = {"prompt_tokens": int(billed.get("prompt_tokens") or len(sequence.input_ids)),
                 "completion_tokens": int(billed.get("completion_tokens") or 1)}
        return cache_entry(rows, rest_at), spent, rows

    bar = tqdm(total=planned, initial=planned - len(sequences), desc="teacher prompt log-probs",
               disable=not progress)
    pool = ThreadPoolExecutor(max_workers=max(1, min(teacher.api.max_concurrency, len(sequences))),
                              thread_name_prefix="prompt-logprobs")
    futures: dict[Future, str] = {pool.submit(ask, example_id): example_id for example_id in sequences}
    errors: list[BaseException] = []
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                error = future.exception()
                if error is not None:
                    errors.append(error)
                elif (answer := future.result()) is not None:
                    keep(futures[future], *answer)
                    bar.update(1)
        if errors:
            raise errors[0]
    except BaseException:
        stop.set()  # Ctrl-C: nothing new is sent; the requests on the wire are abandoned
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
