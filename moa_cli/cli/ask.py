"""`moa ask`: one turn, prompt from the argument and/or stdin, answer on stdout."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from moa_cli.cli import options as opt
from moa_cli.cli.errors import handle_errors
from moa_cli.errors import ConfigError


def read_prompt(argument: str | None) -> str:
    """Piped stdin first, then the argument, separated by a blank line."""
    parts: list[str] = []
    stdin = sys.stdin
    if stdin is not None and not stdin.isatty():
        data = stdin.buffer.read().decode("utf-8", errors="replace") if hasattr(stdin, "buffer") else stdin.read()
        if data.strip():
            parts.append(data.strip("\n"))
    if argument and argument.strip():
        parts.append(argument)
    if not parts:
        raise ConfigError('no prompt: give it as an argument (moa ask "...") or pipe it on stdin')
    return "\n\n".join(parts)


@opt.setting_options("ask")
def ask(
    prompt: Annotated[
        str | None,
        typer.Argument(
            metavar="PROMPT", help="The prompt. Piped stdin comes first when both are given.", show_default=False
        ),
    ] = None,
    *,
    local: opt.Local = False,
    json_output: opt.JsonOutput = False,
    verbose: opt.Verbose = False,
    quiet: opt.Quiet = False,
    resume: opt.Continue = False,
    cid: opt.ConversationId = None,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            metavar="FILE|JSON",
            help="Answer with JSON that matches this JSON Schema (a file, or the schema itself); "
            "checked, with one repair round. Needs a hosted aggregator.",
            show_default=False,
        ),
    ] = None,
    flags: dict[str, Any],
) -> None:
    """Ask once: the references answer in parallel, the aggregator's answer streams to stdout.

    Examples:

      moa ask "Why is the sky blue?"

      cat notes.md | moa ask "Summarise this" > summary.md

      moa ask --rounds 2 -r ollama:llama3.2:1b -r ollama:qwen2.5:1.5b -a ollama:qwen2.5:1.5b "Hi"

      moa ask --schema person.schema.json "Invent a person" | jq .name
    """
    run_ask(
        prompt,
        opt.flag_overrides(flags, verbose=verbose),
        local=local,
        json_output=json_output,
        quiet=quiet,
        resume=resume or cid is not None,
        cid=cid,
        schema=schema,
    )


def read_schema(value: str) -> dict[str, Any]:
    """`--schema`: a JSON Schema given as JSON text or as a file, as a `json_schema` response format."""
    import json
    from pathlib import Path

    from moa_cli.structured import check_response_format

    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"--schema: {value} is neither a JSON Schema object nor a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--schema: cannot read {value}: {exc}") from None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--schema: not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError("--schema: a JSON Schema must be a JSON object")
    try:
        response_format = check_response_format(
            {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
        )
    except ValueError as exc:
        raise ConfigError(f"--schema: {str(exc).removeprefix('response_format.json_schema.schema ')}") from None
    assert response_format is not None
    return response_format


def run_ask(
    prompt: str | None,
    flags: dict[str, Any],
    *,
    local: bool = False,
    json_output: bool = False,
    quiet: bool = False,
    resume: bool = False,
    cid: str | None = None,
    schema: str | None = None,
) -> None:
    """The body of `moa ask` (also used by a bare `moa` with piped stdin)."""
    with handle_errors(json_mode=json_output):
        response_format = read_schema(schema) if schema is not None else None
        text = read_prompt(prompt)
        from moa_cli.cli.runtime import load, run_one_turn  # deferred: keeps --help fast

        settings = load(flags, local=local)
        messages: Any = text
        conversation_id = None
        if resume:  # -c / --cid: the logged conversation, its line-up unless flags say otherwise
            from moa_cli.recorder import resume as resume_conversation

            resumed = resume_conversation(settings, cid)
            settings, conversation_id = resumed.settings, resumed.conversation_id
            messages = [*resumed.history(), {"role": "user", "content": text}]
        result, ids = run_one_turn(
            settings,
            messages,
            json_output=json_output,
            quiet=quiet,
            conversation_id=conversation_id,
            source="ask",
            response_format=response_format,
        )
        if json_output:
            import json

            sys.stdout.write(json.dumps({**result.to_dict(), **ids}, ensure_ascii=False) + "\n")
