"""The aggregator prompt and how earlier answers are injected into a layer's messages."""

from __future__ import annotations

import re

from moa_cli.types import Message

AGGREGATOR_PROMPT = """\
You have been given several responses to the user's latest message, each written \
independently by a different AI assistant (or a different sample of the same one). \
Your task is to synthesise them into a single, high-quality response.

The responses may be wrong, incomplete, biased or contradict each other. Evaluate \
them critically: check facts and reasoning, keep what is correct and useful, and \
discard what is not. Do not simply copy any one response, and do not mention that \
you were given several responses. Write one refined, accurate, well-structured and \
complete answer that directly addresses the user's message, in the user's language.

The responses are numbered and each is enclosed in <response_N> and </response_N> tags:"""

# A response that itself contains "<response_2>" must not be able to fake a boundary.
_TAG = re.compile(r"<(/?)(response_)", re.IGNORECASE)


def neutralise(text: str) -> str:
    """`text` with anything that looks like a <response_N> tag defused."""
    return _TAG.sub(r"&lt;\1\2", text)


_neutralise = neutralise


def references_block(prompt: str, answers: list[str]) -> str:
    """The system text for a layer: the prompt, then the numbered, delimited answers."""
    parts = [prompt.rstrip()]
    for n, answer in enumerate(answers, start=1):
        parts.append(f"<response_{n}>\n{_neutralise(answer.strip())}\n</response_{n}>")
    return "\n\n".join(parts)


def inject_references(messages: list[Message], prompt: str, answers: list[str]) -> list[Message]:
    """Return a copy of `messages` whose system message carries the earlier answers.

    A user's system message keeps its text and gets the block appended; without one, a
    system message is put first. The input list is never modified.
    """
    block = references_block(prompt, answers)
    if messages and messages[0]["role"] == "system":
        first: Message = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]
