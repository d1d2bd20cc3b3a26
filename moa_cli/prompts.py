"""The aggregator prompt and how earlier answers are injected into a layer's messages.

Where the answers go is the `aggregator_layout` setting (LAYOUTS):

    system   in the system message (the user's own, extended; else one put first), ahead of
             the conversation: the paper's layout
    after    (the default: as accurate on IFEval, measured in the README) after the conversation, at the end of its last (user) message: the prompt then
             starts with the very tokens a layer-1 reference's prompt starts with (the whole
             conversation up to its last message's end), so a prefix cache (a provider's, or
             the local runtime's kept prefixes) can reuse what the references already evaluated.
             Every chat template takes it: no second system message, no two user messages in a row
"""

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

#: Where the answers go (see the module docstring); the first is the paper's, the second the default.
LAYOUTS = ("system", "after")

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


def inject_references(
    messages: list[Message], prompt: str, answers: list[str], layout: str = "system"
) -> list[Message]:
    """Return a copy of `messages` that carries the earlier answers, placed as `layout` says.

    "system": a user's system message keeps its text and gets the block appended; without
    one, a system message is put first. "after": the last message gets the block appended,
    after a blank line; everything before it is left as it is. The input list is never modified.
    """
    block = references_block(prompt, answers)
    if layout == "after":
        last = messages[-1]
        return [*messages[:-1], {"role": last["role"], "content": f"{last['content']}\n\n{block}"}]
    if layout != "system":
        raise ValueError(f"unknown layout {layout!r}")
    if messages and messages[0]["role"] == "system":
        first: Message = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]
