"""Fitting each request to its model's context window (issue 24).

A request fits when its prompt's tokens plus its `max_tokens` are no more than the model's
window. Before each call the engine asks `fit_call`, which finds:

    the window   [models."SPEC"] context = N in the config file; else what the provider says
                 (llama.cpp's n_ctx for a local model; GET /models fields such as
                 context_length or max_model_len for an HTTP one); else DEFAULT_CONTEXT,
                 moa's default, and it says so
    the count    the model's own tokenizer where moa has it (local models, exact); else an
                 estimate, and it says so: one token per 3 bytes of UTF-8 (real text averages
                 about 4) plus MESSAGE_OVERHEAD per message

and, when the request would not fit, shortens what matters least first, each step only as
far as needed:

    1. max_tokens above half the window is lowered to half (the prompt keeps the other half)
    2. the oldest messages of the conversation go, oldest first (never the system message
       or the last user message)
    3. the reference answers are shortened evenly (the longest ones first, to one length,
       each marked) until together they are at most half of the room left for the prompt
    4. the last user message is cut in its middle, marked with how much was left out
    5. the reference answers are shortened further, to nothing if need be

If even that does not fit (a system prompt longer than the window), the call fails with
`ContextOverflow` (kind "context") and is never sent. What was shortened is returned as a
`Fit`, and the engine reports it (a `ContextFitted` event, `TurnResult.fitted`).

An HTTP provider's window is looked up only for a request that might not fit in
LOOKUP_ABOVE tokens (estimated): a short turn never waits for a model list.

When the provider refuses a request as longer than the model's context anyway (the window
moa assumed was wrong: `ContextRefused`), `refit_call` fits it again, once, to the window the
provider's message states; when it states none, or one that the refused request already fitted
by moa's count (the count erred short), to REFUSED_SHRINK of the refused request's tokens.

Stdlib only, besides moa's own value types and errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from moa_cli.errors import ContextOverflow
from moa_cli.prompts import inject_references
from moa_cli.types import Message

__all__ = [
    "DEFAULT_CONTEXT",
    "LOOKUP_ABOVE",
    "Fit",
    "Parts",
    "Window",
    "estimate_tokens",
    "fit",
    "fit_call",
    "refit_call",
    "with_references",
]

#: The window assumed for a model whose window neither the config nor its provider gives.
DEFAULT_CONTEXT = 8192
#: Below this many tokens (estimated, max_tokens included) a request is sent as it is, and
#: no provider is asked for its window: every chat model seen has at least this much.
LOOKUP_ABOVE = 2048
#: Tokens per message a chat template adds around each message, at most, in practice.
MESSAGE_OVERHEAD = 8
#: Bytes of UTF-8 per token in the estimate (English averages about 4: this errs long).
BYTES_PER_TOKEN = 3
#: What the marks say where text was left out.
INPUT_MARK = "\n\n[... {count:,} characters left out here by moa to fit the model's context ...]\n\n"
ANSWER_MARK = "\n[... the rest of this answer was left out by moa to fit the model's context ...]"
#: A request its provider refused as too long, without stating a window it did not already
#: fit by moa's count, is fitted again to this fraction of its tokens (prompt plus max_tokens).
REFUSED_SHRINK = 0.5

Counter = Callable[[list[Message]], int]
Build = Callable[[list[Message], list[str]], list[Message]]


def estimate_tokens(messages: Sequence[Message]) -> int:
    """A generous token count of `messages` without a tokenizer (see the module docstring)."""
    return sum(math.ceil(len(m["content"].encode("utf-8")) / BYTES_PER_TOKEN) + MESSAGE_OVERHEAD for m in messages)


@dataclass(frozen=True, slots=True)
class Window:
    """A model's context window in tokens, and where that number came from."""

    tokens: int
    source: str  # "config", "provider", "llama.cpp", "default", "refused" or "refused_guess"
    shared: int = 1  # calls that share it at once, each with its own answer (a local model's samples)

    def describe(self) -> str:
        where = {
            "config": "from the config file",
            "provider": "as its provider says",
            "llama.cpp": "llama.cpp's context",
            "default": "moa's default for a model whose window is unknown",
            "refused": "as its provider said when it refused the first try as too long",
            "refused_guess": (
                f"{REFUSED_SHRINK:.0%} of the first try's tokens: its provider refused that as too long "
                "and stated no smaller window"
            ),
        }.get(self.source, self.source)
        shared = f", shared by {self.shared} calls" if self.shared > 1 else ""
        return f"{self.tokens:,} tokens, {where}{shared}"


def with_references(prompt: str, layout: str = "system") -> Build:
    """A `Parts.build` that puts the answers under `prompt`, where `layout` says (prompts.py)."""

    def build(conversation: list[Message], answers: list[str]) -> list[Message]:
        return inject_references(conversation, prompt, answers, layout)

    return build


def _as_is(conversation: list[Message], answers: list[str]) -> list[Message]:
    return conversation


@dataclass(frozen=True, slots=True)
class Parts:
    """A request's prompt in the pieces fitting may shorten: `build(conversation, answers)`.

    `conversation` is what the user sent (system message, earlier turns, the last user
    message); `answers` the reference answers `build` puts in (none in layer 1).
    """

    conversation: list[Message]
    answers: tuple[str, ...] = ()
    build: Build = _as_is

    def messages(
        self, conversation: list[Message] | None = None, answers: Sequence[str] | None = None
    ) -> list[Message]:
        return self.build(
            self.conversation if conversation is None else conversation,
            list(self.answers if answers is None else answers),
        )


@dataclass(slots=True)
class Fit:
    """A request as it will be sent, and what was done to make it fit (nothing: `steps` empty)."""

    messages: list[Message]
    max_tokens: int
    prompt_tokens: int | None  # None: not counted (short enough that it cannot matter)
    window: Window | None
    estimated: bool  # the count is an estimate, not the model's tokenizer's
    steps: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def summary(self, model: str) -> str:
        """One line: `shortened for M (window 2,048 tokens, llama.cpp's context): the input ...`."""
        assert self.window is not None
        count = "an estimated " if self.estimated else ""
        tokens = f"{count}{self.prompt_tokens:,}" if self.prompt_tokens is not None else "?"
        return (
            f"shortened the prompt for {model} to fit its context window ({self.window.describe()}): "
            f"{'; '.join(self.steps)}; it is now {tokens} tokens, with max_tokens {self.max_tokens}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window.tokens if self.window else None,
            "window_source": self.window.source if self.window else None,
            "prompt_tokens": self.prompt_tokens,
            "estimated": self.estimated,
            "max_tokens": self.max_tokens,
            "steps": list(self.steps),
        }


def _search(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest n in [low, high] with fits(n), assuming fits is monotone; None if none."""
    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def _cut_answers(answers: Sequence[str], cap: int) -> list[str]:
    """Every answer longer than `cap` characters cut to `cap`, marked (water-filling: short ones stay)."""
    return [a if len(a) <= cap else a[:cap].rstrip() + ANSWER_MARK for a in answers]


def _cut_middle(text: str, keep: int) -> str:
    """`text` with its middle left out so that `keep` characters of it remain, marked."""
    if keep >= len(text):
        return text
    head = (keep + 1) // 2
    tail = keep - head
    return (
        text[:head].rstrip()
        + INPUT_MARK.format(count=len(text) - keep)
        + (text[len(text) - tail :].lstrip() if tail else "")
    )


def fit(parts: Parts, window: Window, max_tokens: int, count: Counter, *, estimated: bool, model: str) -> Fit:
    """`parts` built into messages that fit `window` with `max_tokens` (see the module docstring).

    `count` gives a prompt's tokens. ContextOverflow when nothing fits.
    """
    steps: list[str] = []
    if max_tokens * window.shared > window.tokens // 2:
        lowered = max(1, window.tokens // 2 // window.shared)
        steps.append(f"max_tokens lowered from {max_tokens:,} to {lowered:,}")
        max_tokens = lowered
    room = window.tokens - max_tokens * window.shared  # tokens the prompt may take
    conversation = list(parts.conversation)
    answers = list(parts.answers)

    def tokens(conv: list[Message], ans: Sequence[str]) -> int:
        return count(parts.messages(conv, ans))

    def done(conv: list[Message], ans: Sequence[str], used: int) -> Fit:
        return Fit(parts.messages(conv, ans), max_tokens, used, window, estimated, steps)

    used = tokens(conversation, answers)
    if used <= room:
        return done(conversation, answers, used)

    # 2. the oldest messages, between the system message and the last user message
    first = 1 if conversation and conversation[0]["role"] == "system" else 0
    earlier = len(conversation) - 1 - first
    if earlier > 0:

        def without(n: int) -> list[Message]:
            return [*conversation[:first], *conversation[first + n :]]

        drop = _fewest(earlier, lambda n: tokens(without(n), answers) <= room)
        conversation = without(drop)
        steps.append(f"the {drop} oldest message{'s' * (drop != 1)} of the conversation left out")
        used = tokens(conversation, answers)
        if used <= room:
            return done(conversation, answers, used)

    # 3. the answers evenly, down to half the room between them
    longest = max((len(a) for a in answers), default=0)
    cap = longest
    if answers:
        share = room // 2 * BYTES_PER_TOKEN // len(answers)  # characters each keeps, at least
        floor = min(longest, share)
        found = _search(floor, longest, lambda c: tokens(conversation, _cut_answers(answers, c)) <= room)
        cap = floor if found is None else found
        if found is not None:
            steps.append(_answers_step(answers, cap))
            return done(conversation, _cut_answers(answers, cap), tokens(conversation, _cut_answers(answers, cap)))

    # 4. the last user message, in its middle
    last = conversation[-1]
    text = last["content"]

    def with_input(keep: int) -> list[Message]:
        return [*conversation[:-1], {"role": last["role"], "content": _cut_middle(text, keep)}]

    keep = _search(0, len(text), lambda k: tokens(with_input(k), _cut_answers(answers, cap)) <= room)
    if keep is None:
        # 5. the answers further, to nothing
        keep = 0
        found = _search(0, cap, lambda c: tokens(with_input(0), _cut_answers(answers, c)) <= room) if answers else None
        if found is None:
            least = tokens(with_input(0), _cut_answers(answers, 0))
            raise ContextOverflow(
                model,
                f"the prompt cannot fit the model's context window ({window.describe()}): with max_tokens "
                f"{max_tokens:,} and everything that may be shortened left out, it is still "
                f"{'an estimated ' if estimated else ''}{least:,} tokens (the system prompt is never shortened)",
            )
        cap = found
    if cap < longest:
        steps.append(_answers_step(answers, cap))
    conversation = with_input(keep)
    if keep < len(text):
        steps.append(f"the input cut in its middle ({len(text) - keep:,} of {len(text):,} characters left out)")
    return done(conversation, _cut_answers(answers, cap), tokens(conversation, _cut_answers(answers, cap)))


def _fewest(most: int, fits: Callable[[int], bool]) -> int:
    """The fewest n in [1, most] with fits(n) (monotone); `most` if none."""
    low, high = 1, most
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _answers_step(answers: Sequence[str], cap: int) -> str:
    cut = sum(1 for a in answers if len(a) > cap)
    return f"the reference answers shortened evenly ({cut} of {len(answers)} cut to {cap:,} characters)"


# ---------------------------------------------------------------------------- before a call


async def window_of(provider: Any, model: str, spec: str, contexts: Mapping[str, int]) -> Window:
    """The window of `spec` (served by `provider` as `model`): config, provider, default."""
    if spec in contexts:
        return Window(contexts[spec], "config")
    ask = getattr(provider, "context_window", None)
    if ask is not None:
        found = await ask(model)
        if isinstance(found, Window):
            return found
        if isinstance(found, int) and found > 0:
            return Window(found, "provider")
    return Window(DEFAULT_CONTEXT, "default")


async def fit_call(
    provider: Any,
    model: str,
    spec: str,
    parts: Parts,
    max_tokens: int,
    contexts: Mapping[str, int],
    *,
    sharing: int = 1,
) -> Fit:
    """The request for one call, fitted to `spec`'s window; ContextOverflow if it cannot be.

    `sharing` is how many calls of the turn's layer go to this model at once: a provider with
    `shared_context = True` (a local model: one llama.cpp context, the prompt's cells shared)
    needs room for each of their answers, so they run together rather than one by one.
    A provider may offer `async context_window(model) -> int | Window | None` and
    `async tokenizer(model) -> Callable[[list[Message]], int] | None` (both optional). A
    request short enough to fit any model (LOOKUP_ABOVE) is left as it is, with no lookup,
    unless the config gives the model's window.
    """
    messages = parts.messages()
    count = await _tokenizer(provider, model)
    if count is None and spec not in contexts and estimate_tokens(messages) + max_tokens <= LOOKUP_ABOVE:
        return Fit(messages, max_tokens, None, None, True)
    window = await window_of(provider, model, spec, contexts)
    if _sharing(provider, sharing) > 1:
        window = Window(window.tokens, window.source, sharing)
    return fit(parts, window, max_tokens, count or estimate_tokens, estimated=count is None, model=spec)


async def refit_call(
    provider: Any,
    model: str,
    spec: str,
    parts: Parts,
    max_tokens: int,
    refused: Fit,
    stated: int | None,
    *,
    sharing: int = 1,
) -> Fit:
    """The request for a call whose provider refused `refused` (what was sent) as longer than the
    model's context window, fitted again from `parts` and `max_tokens` (as for `fit_call`).

    The window is `stated`, the one the provider's error gives, when the refused request did
    not fit it by moa's count; else REFUSED_SHRINK of the refused request's tokens (its prompt,
    counted as `fit_call` counts, plus its max_tokens), smaller than what was refused either way.
    ContextOverflow if the prompt cannot fit it. The engine calls this once per call: no loop.
    """
    count = await _tokenizer(provider, model)
    counter = count or estimate_tokens
    shared = _sharing(provider, sharing)
    prompt = refused.prompt_tokens if refused.prompt_tokens is not None else counter(refused.messages)
    size = prompt + refused.max_tokens * shared
    if stated is not None and stated < size:
        window = Window(stated, "refused", shared)
    else:
        window = Window(max(1, int(size * REFUSED_SHRINK)), "refused_guess", shared)
    return fit(parts, window, max_tokens, counter, estimated=count is None, model=spec)


async def _tokenizer(provider: Any, model: str) -> Counter | None:
    tokenizer = getattr(provider, "tokenizer", None)
    found: Counter | None = await tokenizer(model) if tokenizer is not None else None
    return found


def _sharing(provider: Any, sharing: int) -> int:
    """Calls sharing one window: a local model's samples (one llama.cpp context); else 1."""
    return sharing if sharing > 1 and getattr(provider, "shared_context", False) else 1
