"""How the aggregator combines the last layer's answers: the `aggregation` setting.

    synthesize   the paper's method: the aggregator reads the numbered answers and writes a
                 new one, streamed as it is written
    select       the aggregator is asked only which numbered answer is best (a few output
                 tokens, at temperature 0); that answer is then given verbatim, so the final
                 answer is never worse than the answer picked, and cannot loop. When the reply
                 names no valid number, moa synthesizes instead and says so (a `TurnWarning`
                 event and `TurnResult.warnings`)
    consensus    no aggregator call: the answer closest to the others (word overlap), among
                 those that ended by themselves, is given verbatim (minimum Bayes risk
                 selection). For models too small to judge (the bundled 135M one names no
                 number), and the cheapest: the turn is the references alone

The engine runs the calls (`Caller` is its `_Turn`); this module decides which calls to make
and what the answer is. Stdlib only, besides moa's own value types.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from moa_cli.events import AnswerDelta, Event, TurnWarning
from moa_cli.fitting import Parts, with_references
from moa_cli.prompts import neutralise
from moa_cli.settings import AGGREGATIONS
from moa_cli.types import CallInfo, Message, Proposal, Usage

__all__ = [
    "AGGREGATIONS",
    "SELECT_MAX_TOKENS",
    "SELECT_PROMPT",
    "AggregatorStep",
    "aggregate",
    "parse_choice",
    "select_messages",
]

#: Output tokens allowed for the selection: enough for "Response 12." and nothing to loop on.
SELECT_MAX_TOKENS = 8

SELECT_PROMPT = """\
Below are a request and {count} candidate responses to it, numbered 1 to {count}.

<request>
{request}
</request>

{responses}

Which response follows the request best, including every instruction it gives about \
format, length, wording and content? Reply with the number of the best response only \
(1 to {count}), and nothing else."""


class Caller(Protocol):
    """What the engine gives a strategy: one model call, and the event sink."""

    def emit(self, event: Event) -> None: ...

    async def call(
        self,
        call: CallInfo,
        messages: list[Message] | Parts,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        answer: bool = True,
    ) -> Proposal:
        """Run one call; `answer=False` streams it as CallDelta, not as the answer."""
        ...


@dataclass(slots=True)
class AggregatorStep:
    """The aggregator step's result. `final` is the answer as a Proposal (None text: it failed)."""

    final: Proposal
    calls: list[Proposal] = field(default_factory=list)  # every aggregator call made, in order
    selected: Proposal | None = None
    warnings: list[str] = field(default_factory=list)
    failed_call: CallInfo | None = None  # the call whose failure ended the step

    def usage(self) -> Usage | None:
        """What the aggregator's calls used (None: no call was made)."""
        if len(self.calls) == 1:
            return self.calls[0].usage
        return Usage.total([c.usage for c in self.calls]) if self.calls else None


def select_messages(messages: Sequence[Message], answers: Sequence[str]) -> list[Message]:
    """The conversation with its last user message replaced by the selection question.

    The system prompt and earlier turns stay, so the aggregator judges in context.
    """
    request = neutralise(messages[-1]["content"].strip())
    responses = "\n\n".join(
        f"<response_{n}>\n{neutralise(answer.strip())}\n</response_{n}>" for n, answer in enumerate(answers, start=1)
    )
    question = SELECT_PROMPT.format(count=len(answers), request=request, responses=responses)
    return [*messages[:-1], {"role": "user", "content": question}]


# A number not glued to a letter or digit before it ("agg2", "Llama3" name nothing), though
# "response_2" and "<response_2>" do name 2.
_NUMBER = re.compile(r"(?<![.]|[^\W_])(\d{1,3})(?![\d.]\d)")
_WORD = re.compile(r"[^\W\d_]")


def parse_choice(text: str, count: int) -> int | None:
    """The answer number (1..count) a selection reply's first line ends on, or None if none.

    "2", "Response 2.", "<response_2>", "**2**" and "The best response is 2." name 2. A reply
    that goes on in words after its first number ("1. The Barber Paradox…": a small model
    starting a list of its own) names nothing, nor do "0", "7 of 3" or "none".
    """
    line = next((line for line in text.splitlines() if line.strip()), "")  # "2\n\nBecause …" names 2
    match = _NUMBER.search(line)
    if match is None or _WORD.search(line, match.end()):
        return None
    number = int(match.group(1))
    return number if 1 <= number <= count else None


async def aggregate(
    strategy: str,
    caller: Caller,
    aggregator: str,
    layer: int,
    messages: list[Message],
    prompt: str,
    proposals: Sequence[Proposal],
    layout: str = "system",
) -> AggregatorStep:
    """Run the aggregator step over the last layer's answered `proposals`; a synthesis puts
    them under `prompt` where `layout` says (prompts.py)."""
    if strategy == "select":
        return await _select(caller, aggregator, layer, messages, prompt, proposals, layout)
    if strategy == "consensus":
        answered = [p for p in proposals if p.text is not None]
        return _verbatim(caller, answered[consensus_choice(answered)], aggregator, layer)
    if strategy != "synthesize":
        raise ValueError(f"unknown aggregation {strategy!r}")
    return await _synthesize(caller, CallInfo(aggregator, layer, 0, "aggregator"), messages, prompt, proposals, layout)


def _verbatim(caller: Caller, chosen: Proposal, aggregator: str, layer: int) -> AggregatorStep:
    """`chosen` is the answer, streamed as it stands, with no aggregator call."""
    caller.emit(AnswerDelta(CallInfo(aggregator, layer, 0, "aggregator"), chosen.text or ""))
    return AggregatorStep(_as_final(chosen, aggregator, layer), [], selected=chosen)


async def _synthesize(
    caller: Caller,
    call: CallInfo,
    messages: list[Message],
    prompt: str,
    proposals: Sequence[Proposal],
    layout: str,
) -> AggregatorStep:
    answers = [p.text for p in proposals if p.text is not None]
    final = await caller.call(call, Parts(messages, tuple(answers), with_references(prompt, layout)))
    return AggregatorStep(final, [final], failed_call=call if final.text is None else None)


async def _select(
    caller: Caller,
    aggregator: str,
    layer: int,
    messages: list[Message],
    prompt: str,
    proposals: Sequence[Proposal],
    layout: str,
) -> AggregatorStep:
    answered = [p for p in proposals if p.text is not None]
    judge = CallInfo(aggregator, layer, 0, "aggregator")
    if len(answered) == 1:  # nothing to choose between: no call
        return _verbatim(caller, answered[0], aggregator, layer)
    answers = [p.text or "" for p in answered]
    reply = await caller.call(
        judge,
        Parts(messages, tuple(answers), select_messages),
        max_tokens=SELECT_MAX_TOKENS,
        temperature=0.0,
        answer=False,
    )
    if reply.text is None:
        return AggregatorStep(reply, [reply], failed_call=judge)
    number = parse_choice(reply.text, len(answered))
    if number is None:
        said = " ".join(reply.text.split())[:60]
        warning = (
            f"aggregation select: the aggregator named no answer between 1 and {len(answered)} "
            f"(it said {said!r}), so it synthesized one instead"
        )
        caller.emit(TurnWarning(warning))
        fallback = await _synthesize(
            caller, CallInfo(aggregator, layer, 1, "aggregator"), messages, prompt, answered, layout
        )
        fallback.calls.insert(0, reply)
        fallback.warnings.append(warning)
        return fallback
    chosen = answered[number - 1]
    caller.emit(AnswerDelta(judge, chosen.text or ""))
    return AggregatorStep(_as_final(chosen, aggregator, layer), [reply], selected=chosen)


def _as_final(chosen: Proposal, aggregator: str, layer: int) -> Proposal:
    """The chosen answer as the aggregator's result: its text and why it stopped, verbatim."""
    return Proposal(aggregator, layer, text=chosen.text, finish_reason=chosen.finish_reason)


# ---------------------------------------------------------------------------- consensus


def _grams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {(w,) for w in words} | set(itertools.pairwise(words))


def similarity(a: str, b: str) -> float:
    """Word unigram-and-bigram overlap of two answers (Jaccard, 0..1)."""
    left, right = _grams(a), _grams(b)
    union = left | right
    return len(left & right) / len(union) if union else 0.0


def consensus_choice(proposals: Sequence[Proposal]) -> int:
    """The position of the answer closest to all the others (minimum Bayes risk selection).

    Answers that ended by themselves come before answers cut at max_tokens (a loop usually
    runs into the limit); among those, the highest mean similarity to the other answers
    wins, and the first in line-up order breaks a tie. No model is asked.
    """
    texts = [p.text or "" for p in proposals]
    if len(texts) < 2:
        return 0

    def key(i: int) -> tuple[bool, float, int]:
        mean = sum(similarity(texts[i], texts[j]) for j in range(len(texts)) if j != i) / (len(texts) - 1)
        return (proposals[i].finish_reason != "length", mean, -i)

    return max(range(len(texts)), key=key)
