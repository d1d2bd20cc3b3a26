"""Agents' turns: tool calls and structured output checked, with one repair round.

    run_checked(messages, plan, router, sink)      the engine's run_turn (or `first_step`), then the checks

With `response_format` (`json_object`, or `json_schema`, strict or not) the aggregator's
call carries the format (a provider that supports it constrains the answer), and the answer
is validated here with a real JSON Schema validator (`jsonschema`). Its text is held back
until it passes: a client never receives JSON that is then taken back. With `tools`, the
aggregator's tool calls must name an offered tool and have one JSON object as arguments
(tools.py); its text, if any, streams as it comes, the calls go out once checked.

What fails the check gets one repair round: the aggregator alone, over the same proposals,
is shown what it wrote and what is wrong with it, and answers again. What fails again ends
the turn with `InvalidOutput` (a `TurnFailed`: exit 1 in the CLI, 502 from `moa serve`)
carrying the validation error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from moa_cli.engine import EventSink, Plan, Router, run_aggregation, run_turn
from moa_cli.errors import BadResponse, TurnFailed
from moa_cli.events import AnswerDelta, Event, TurnDone
from moa_cli.tools import check_tool_calls
from moa_cli.types import CallInfo, Message, TurnResult, Usage

#: A turn's first step, as the engine's run_turn: (messages, plan, router, sink) -> result.
Step = Callable[[list[Message], Plan, Router, EventSink | None], Awaitable[TurnResult]]

__all__ = ["InvalidOutput", "check_answer", "check_response_format", "run_checked"]


class InvalidOutput(TurnFailed):
    """The aggregator's answer failed the format or tool check twice. `what` is "json" or "tool_call"."""

    def __init__(self, message: str, failure: BadResponse, what: str) -> None:
        super().__init__(message, [failure], aggregator=True)
        self.what = what


def check_response_format(response_format: Any) -> dict[str, Any] | None:
    """The response format as the aggregator gets it (None: plain text), or ValueError saying what is wrong.

    Accepted: {"type": "text"}, {"type": "json_object"} and
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}; the
    schema must itself be valid JSON Schema (checked against its metaschema).
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be an object with a type")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise ValueError(f"response_format.type must be text, json_object or json_schema (got {kind!r})")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise ValueError("response_format.json_schema must be an object with name and schema")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ValueError("response_format.json_schema.name must be 1-64 letters, digits, _ or -")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise ValueError("response_format.json_schema.schema must be a JSON Schema object")
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"response_format.json_schema.schema is not valid JSON Schema: {exc.message}") from None
    return {"type": "json_schema", "json_schema": dict(spec, schema=schema)}


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*)\n\s*```\s*$", re.DOTALL)


def check_answer(text: str, response_format: dict[str, Any]) -> tuple[str, str | None]:
    """The answer's JSON text (a ```json fence taken off) and what is wrong with it (None: valid)."""
    fenced = _FENCE.match(text)
    body = (fenced.group(1) if fenced else text).strip()
    try:
        value = json.loads(body)
    except ValueError as exc:
        return body, f"the answer is not valid JSON: {exc}"
    if response_format["type"] == "json_object":
        return body, None if isinstance(value, dict) else "the answer is not a JSON object"
    import jsonschema

    schema = response_format["json_schema"].get("schema", {})
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return body, None
    where = "/".join(str(p) for p in error.absolute_path)
    return body, f"the answer does not match the schema{f' at /{where}' if where else ''}: {error.message}"


def _repair_message(problem: str, response_format: dict[str, Any] | None) -> str:
    if response_format is None:
        return f"That reply cannot be used: {problem}. Reply again, and make each tool call's arguments one valid JSON object."
    wanted = "one JSON object"
    if response_format["type"] == "json_schema":
        schema = json.dumps(response_format["json_schema"].get("schema", {}), ensure_ascii=False)
        wanted = f"one JSON value that matches this JSON Schema: {schema}"
    return f"That reply cannot be used: {problem}. Reply again with {wanted}, and nothing else."


async def run_checked(
    messages: list[Message],
    plan: Plan,
    router: Router,
    sink: EventSink | None,
    *,
    first_step: Step = run_turn,
) -> TurnResult:
    """A turn of an agent's plan (`plan.agent`): `first_step` (the whole turn, or the aggregator
    over kept proposals when `moa serve` retries), checked, with one repair round."""
    agent = plan.agent
    assert agent is not None
    emit = sink or (lambda _: None)
    formatted = agent.response_format
    held: list[str] = []
    repairing = False

    def filtered(event: Event) -> None:
        # With a format, the text waits for the check; a repair's text is never streamed.
        if isinstance(event, AnswerDelta) and (formatted is not None or repairing):
            held.append(event.text)
            return
        if isinstance(event, TurnDone):  # said once, below, of the checked result
            return
        call = getattr(event, "call", None)
        if repairing and isinstance(call, CallInfo) and call.is_aggregator:
            # The repair is the aggregator's second call (index 1, as select's fallback is),
            # so the log and `moa serve`'s report keep both.
            event = dataclasses.replace(event, call=dataclasses.replace(call, index=call.index + 1))  # type: ignore[arg-type]
        emit(event)

    first = await first_step(messages, plan, router, filtered)
    problem, text = _problem(first, agent.tools, formatted)
    result = first
    if problem is not None:
        first_problem = problem
        repairing = True
        wrote = _as_written(first)
        fix = _repair_message(problem, formatted)
        again: list[Message] = [*messages, {"role": "assistant", "content": wrote}, {"role": "user", "content": fix}]
        native = (*agent.conversation, {"role": "assistant", "content": wrote}, {"role": "user", "content": fix})
        repair_plan = replace(plan, agent=replace(agent, conversation=native))
        second = await run_aggregation(again, repair_plan, router, first.proposals, filtered)
        problem, text = _problem(second, agent.tools, formatted)
        if problem is not None:
            what = "tool_call" if second.tool_calls or formatted is None else "json"
            reason = f"{problem} (after one repair round)"
            raise InvalidOutput(
                f"the aggregator {plan.aggregator} gave an answer that cannot be used: {reason}",
                BadResponse(plan.aggregator, reason),
                what,
            )
        usage = Usage.total([first.usage, second.usage])
        answer = second.answer if formatted is not None else first.answer  # the first's text was streamed
        result = replace(
            second,
            answer=answer,
            usage=usage,
            seconds=first.seconds + second.seconds,
            warnings=[*first.warnings, *second.warnings, f"repaired: {first_problem}"],
        )
    if formatted is not None:
        result = replace(result, answer=text)
        emit(AnswerDelta(CallInfo(plan.aggregator, plan.rounds + 1, 0, "aggregator"), text))
    emit(TurnDone(result))
    return result


def _problem(
    result: TurnResult, tools: Sequence[dict[str, Any]], formatted: dict[str, Any] | None
) -> tuple[str | None, str]:
    """What is wrong with a result (None: nothing), and its answer text (the JSON, with a format)."""
    if result.tool_calls:
        return check_tool_calls(result.tool_calls, tools), result.answer
    if formatted is not None:
        body, problem = check_answer(result.answer, formatted)
        return problem, body
    return None, result.answer


def _as_written(result: TurnResult) -> str:
    """What the aggregator wrote, as text for the repair round's history."""
    lines = [result.answer] if result.answer.strip() else []
    lines += [f"[called the tool {c.name} with arguments {c.arguments}]" for c in result.tool_calls]
    return "\n".join(lines)
