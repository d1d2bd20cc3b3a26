"""Plain value types shared by the engine, providers and front ends (stdlib and defaults.py only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from moa_cli import defaults
from moa_cli.errors import KIND_WORDS


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts reported by a provider. `None` means the provider did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cost: float | None = None  # USD, when the provider reported it (OpenRouter's usage.cost)
    # Prompt tokens the provider did not evaluate again but took from a prefix cache (OpenAI's
    # and vLLM's prompt_tokens_details.cached_tokens; the local runtime's copied cells).
    cached_tokens: int | None = None

    @property
    def known(self) -> bool:
        return self.total_tokens is not None

    def to_dict(self) -> dict[str, int | None]:
        cached = {"cached_tokens": self.cached_tokens} if self.cached_tokens is not None else {}
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            **cached,
        }

    @staticmethod
    def total(usages: list[Usage | None]) -> Usage:
        """Sum of the calls' usage; unknown (all None) if any call did not report it.

        A partial sum would understate the cost, so we say "unknown" rather than guess.
        """
        if not usages or any(u is None or not u.known for u in usages):
            return Usage()
        prompt = sum(u.prompt_tokens or 0 for u in usages if u is not None)
        completion = sum(u.completion_tokens or 0 for u in usages if u is not None)
        return Usage(prompt, completion, prompt + completion)


@dataclass(frozen=True, slots=True)
class Finish:
    """Why a model stopped, as the server said it: "stop", "length" (hit max_tokens), ...

    A provider yields at most one, after the text and before the Usage.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as a stream carries it (OpenAI's `delta.tool_calls[i]`).

    The first piece of call `index` has its `id` and `name`; the rest add to `arguments`.
    A provider yields these among the text pieces (tools.py joins them into `ToolCall`s).
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the aggregator asked for: `arguments` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """What an agent's request adds to a turn (tools.py): the aggregator's real tools and format.

    `conversation` is the request's messages as OpenAI shapes them (assistant `tool_calls`,
    `tool` results); the references see it as text, the aggregator as it is. `tools` are
    OpenAI tool objects, `tool_choice` is passed on as given, `response_format` is
    `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {...}}`.
    """

    conversation: tuple[dict[str, Any], ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One chat-completion call, as the engine hands it to a provider."""

    model: str
    messages: list[Message]
    temperature: float = defaults.TEMPERATURE
    max_tokens: int = defaults.MAX_TOKENS
    seed: int | None = None
    repeat_penalty: float | None = None  # local (llama.cpp) models only; None: the provider's own
    top_p: float | None = None  # None: the server's own (moa serve passes a request's to the aggregator)
    presence_penalty: float | None = None  # None: the server's own (likewise, from moa serve's request)
    frequency_penalty: float | None = None
    # False: no one reads the pieces as they arrive (a reference of `moa serve`, `moa batch`,
    # `--quiet`): the provider may ask for the answer whole and yield it as one piece.
    stream: bool = True

    # An agent's aggregator call (tools.py): sent instead of `messages` when set (OpenAI-shaped,
    # with tool calls and results), and the tools and response format, passed on as they are.
    wire_messages: tuple[dict[str, Any], ...] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def sampling(self) -> dict[str, Any]:
        """What this request sets besides the model and messages, as it is sent: temperature,
        max_tokens and seed always (seed may be None), each other field when it is set."""
        sent: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}
        for name in ("top_p", "presence_penalty", "frequency_penalty", "repeat_penalty"):
            value = getattr(self, name)
            if value is not None:
                sent[name] = value
        return sent


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Identifies one model call within a turn.

    `layer` starts at 1; the aggregator's layer is rounds + 1. `index` is the position of
    the model in the line-up, so two samples of one model (Self-MoA) stay distinct.
    """

    model: str
    layer: int
    index: int
    role: Literal["proposer", "aggregator"] = "proposer"

    @property
    def is_aggregator(self) -> bool:
        return self.role == "aggregator"


@dataclass(slots=True)
class Proposal:
    """What one reference model produced in one layer. `text` or `error` is None.

    A failed call has `error` (a one-line reason), `error_kind` (one of `errors.KINDS`) and
    the HTTP `status` when there was one. `finish_reason` is why the model stopped when the
    provider said ("length": cut at max_tokens), else None.
    """

    model: str
    layer: int
    text: str | None = None
    error: str | None = None
    seconds: float = 0.0
    usage: Usage | None = None
    timed_out: bool = False  # error_kind is "timeout" or "deadline"
    error_kind: str | None = None
    status: int | None = None
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)  # an aggregator's, with tools

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "text": self.text,
            "error": self.error,
            "error_kind": self.error_kind,
            "status": self.status,
            "finish_reason": self.finish_reason,
            "seconds": round(self.seconds, 3),
            "usage": self.usage.to_dict() if self.usage and self.usage.known else None,
        }


@dataclass(slots=True)
class TurnResult:
    """The outcome of one MoA turn; `to_dict()` is exactly what `moa ask --json` prints.

    `finish_reason` is why the aggregator stopped ("length": the answer was cut at
    max_tokens), None when its provider did not say.
    """

    answer: str
    aggregator: str
    proposals: list[Proposal] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    aggregator_usage: Usage | None = None
    finish_reason: str | None = None
    max_tokens: int | None = None  # the limit the calls ran with, for "cut at the token limit"
    # Cost of every call (pricing.py), set when the turn ends: `cost_usd` when every call is
    # priced, else None; `priced_usd` sums the priced calls; `unpriced_calls` counts the others.
    cost_usd: float | None = None
    priced_usd: float | None = None
    unpriced_calls: int = 0
    # How the aggregator combined the answers (aggregation.py): the strategy asked for, the
    # proposal `select` gave verbatim (None: none was), and what went otherwise ("fell back ...").
    aggregation: str = defaults.AGGREGATION
    selected: Proposal | None = None
    warnings: list[str] = field(default_factory=list)
    # With tools (tools.py): the calls the aggregator asked for (finish_reason "tool_calls").
    tool_calls: list[ToolCall] = field(default_factory=list)
    # What was shortened to fit a model's context window, one entry per call (fitting.py).
    fitted: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[Proposal]:
        return [p for p in self.proposals if p.error is not None]

    @property
    def degraded(self) -> bool:
        """A reference failed or timed out: the answer was made from fewer answers than asked
        for (one cut by --quorum is the quorum at work, not a degradation)."""
        return any(p.error is not None and p.error_kind != "quorum" for p in self.proposals)

    def references_summary(self) -> str:
        """`3 of 4 references (qwen timed out)`: how many reference calls answered, and why not."""
        answered = sum(p.text is not None for p in self.proposals)
        rounds = len({p.layer for p in self.proposals})
        noun = "references" if rounds <= 1 else "reference answers"
        text = f"{answered} of {len(self.proposals)} {noun}"
        failed = self.failed
        if failed:
            words = (
                "timed out"
                if p.timed_out and p.error_kind in (None, "other")
                else KIND_WORDS.get(p.error_kind or "other", "failed")
                for p in failed
            )
            text += f" ({', '.join(f'{p.model} {w}' for p, w in zip(failed, words, strict=True))})"
        return text

    def references_dict(self) -> dict[str, Any]:
        return {
            "asked": len(self.proposals),
            "answered": sum(p.text is not None for p in self.proposals),
            "degraded": self.degraded,
            "summary": self.references_summary(),
        }

    def _selected_dict(self) -> dict[str, Any] | None:
        """The proposal `select` chose: its model, layer and position in the line-up (from 0)."""
        if self.selected is None:
            return None
        layer = [p for p in self.proposals if p.layer == self.selected.layer]
        index = next((i for i, p in enumerate(layer) if p is self.selected), None)
        return {"model": self.selected.model, "layer": self.selected.layer, "index": index}

    def to_dict(self) -> dict[str, Any]:
        extra = {"tool_calls": [c.to_dict() for c in self.tool_calls]} if self.tool_calls else {}
        return {
            "answer": self.answer,
            "aggregator": self.aggregator,
            "finish_reason": self.finish_reason,
            "proposals": [p.to_dict() for p in self.proposals],
            "usage": self.usage.to_dict(),
            "cost_usd": self.cost_usd,
            "seconds": round(self.seconds, 3),
            "aggregation": {
                "strategy": self.aggregation,
                "selected": self._selected_dict(),
                "warnings": list(self.warnings),
            },
            "references": self.references_dict(),
            "fitted": [dict(f) for f in self.fitted],
            **extra,
        }
