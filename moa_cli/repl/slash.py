"""The REPL's slash commands: each takes the chat state and a Console, prints, and says what next.

    /help  /exit  /new  /models  /set KEY VALUE  /system [TEXT]  /proposals  /retry  /save [FILE]

The functions here never run a turn: `/retry` returns `Next.RETRY` and the REPL runs
it. They print to the Console they are given (stderr in the REPL), so stdout keeps
carrying answers only. An unknown command or setting names the closest one (difflib).

`read` decides what a line is: an exit word, a command, or a prompt. `//text` is always
the prompt "/text"; and with stdin not a terminal only known commands are commands, so a
piped question such as "/etc is a directory?" is sent, not eaten.

`SETTABLE` and `apply_setting` are the seam `/set` goes through.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa_cli.config import Settings, with_lineup
from moa_cli.conversation import Conversation
from moa_cli.errors import ConfigError
from moa_cli.providers.registry import check_lineup
from moa_cli.settings import by_key, parse_text, settable, show

if TYPE_CHECKING:  # rich itself loads later: the REPL imports this module before its first prompt
    from rich.console import Console

EXIT_WORDS = frozenset({"exit", "quit", ":q"})

# A slash, then a word: "/usr/bin is ..." is a question, not a command.
_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?=\s|$)\s*(.*)$", re.DOTALL)


FORCE = "--force"  # `/save FILE --force` replaces an existing file


class Next(Enum):
    """What the REPL does after a slash command."""

    CONTINUE = "continue"
    EXIT = "exit"
    RETRY = "retry"  # run `ChatState.last_prompt` again


@dataclass
class ChatState:
    """What the slash commands read and change. The REPL owns it."""

    settings: Settings
    conversation: Conversation
    last_prompt: str | None = None  # the last prompt sent, whether or not it was answered
    last_failed: bool = False  # that prompt failed or was cancelled: it is not in the conversation
    conversation_id: str | None = None  # in the log (store/); /new starts another

    @classmethod
    def start(cls, settings: Settings, resumed: Any = None) -> ChatState:
        """A new conversation, or `resumed` (recorder.Resumed: `moa chat -c`) with its turns."""
        from moa_cli.store import new_conversation_id
        from moa_cli.types import TurnResult

        state = cls(
            settings,
            Conversation(settings.system, multi_turn=settings.multi_turn),
            conversation_id=new_conversation_id(),
        )
        if resumed is not None:
            state.conversation_id = resumed.conversation_id
            for turn in resumed.turns:
                result = TurnResult(turn.answer or "", turn.lineup.get("aggregator", ""))
                state.conversation.add(turn.prompt, result, turn)
        return state


Handler = Callable[["ChatState", str, "Console"], Next]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    help: str
    run: Handler


def error(console: Console, message: str) -> None:
    """One `moa: error: ...` line, as everywhere else in moa."""
    text = f"moa: error: {' '.join(message.split())}"
    console.print(text, style="red", markup=False, highlight=False, soft_wrap=True)


def note(console: Console, message: str) -> None:
    console.print(message, style="dim", markup=False, highlight=False, soft_wrap=True)


def closest(word: str, choices: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return matches[0] if matches else None


# ---------------------------------------------------------------------------- commands


def _help(state: ChatState, arg: str, console: Console) -> Next:
    from rich.text import Text

    table = Text()
    width = max(len(c.usage) for c in COMMANDS.values())
    for command in COMMANDS.values():
        table.append(f"  {command.usage:<{width}}  ", style="bold")
        table.append(f"{command.help}\n")
    table.append("\nKeys: ", style="bold")
    table.append(
        "Enter sends · Esc-Enter or Alt-Enter inserts a new line (pastes arrive whole) · "
        "Up/Down and Ctrl-R search the history · Tab completes commands · "
        "//text sends a line starting with / · "
        "Ctrl-C cancels a running turn · Ctrl-D or /exit quits"
    )
    console.print(table)
    return Next.CONTINUE


def _exit(state: ChatState, arg: str, console: Console) -> Next:
    return Next.EXIT


def _new(state: ChatState, arg: str, console: Console) -> Next:
    state.conversation.clear()
    state.last_prompt, state.last_failed = None, False
    from moa_cli.store import new_conversation_id

    state.conversation_id = new_conversation_id()
    note(console, "new conversation")
    return Next.CONTINUE


def lineup_lines(settings: Settings) -> list[str]:
    s = settings
    lines = [f"references ({len(s.references)}):"]
    lines += [f"  {n}. {model}" for n, model in enumerate(s.references, start=1)]
    lines.append(f"aggregator: {s.aggregator}")
    deadline = f"{s.layer_deadline:g}s" if s.layer_deadline else "off"
    lines.append(
        f"rounds {s.rounds} · temperature {s.temperature:g} · max_tokens {s.max_tokens} · "
        f"layer_deadline {deadline} · quorum {s.quorum or 'off'} · aggregation {s.aggregation} · "
        f"multi-turn {'on' if s.multi_turn else 'off'}"
    )
    return lines


def _models(state: ChatState, arg: str, console: Console) -> Next:
    console.print("\n".join(lineup_lines(state.settings)), markup=False, highlight=False)
    return Next.CONTINUE


# Settings `/set` may change, from their declarations (settings.py): name -> Spec.
SETTABLE = settable()


def setting_name(key: str) -> str:
    """`max-tokens` and `reference_models` as the Settings field names."""
    return by_key().get(key.lower(), key.lower().replace("-", "_"))


def apply_setting(settings: Settings, key: str, value: str) -> Settings:
    """A validated copy of `settings` with one value changed; ConfigError says what is wrong."""
    name = setting_name(key)
    if name not in SETTABLE:
        hint = closest(name, list(SETTABLE))
        more = f"; did you mean {hint}?" if hint else ""
        raise ConfigError(f"/set: unknown setting {key!r}{more} (settable: {', '.join(SETTABLE)})")
    try:
        parsed = parse_text(name, value)
    except ValueError as exc:
        raise ConfigError(f"/set {name}: {exc}, got {value!r}") from None
    new = settings.with_changes(**{name: parsed})
    if name in ("aggregator", "references"):
        check_lineup(new)  # a missing key fails now, not at the next turn
    return new


def _lineup(state: ChatState, arg: str, console: Console) -> Next:
    name = arg.strip()
    if not name:
        current = state.settings.lineup or "none (the line-up comes from single settings)"
        note(console, f"line-up: {current}; known: {', '.join(state.settings.lineups)} (/lineup NAME switches)")
        return Next.CONTINUE
    try:
        new = with_lineup(state.settings, name)
        check_lineup(new)
    except ConfigError as exc:
        error(console, str(exc))
        return Next.CONTINUE
    # The conversation keeps its own system prompt (/system); the line-up does not change it.
    state.settings = replace(new, system=state.conversation.system)
    note(console, f"line-up {name} from the next turn (settings changed with /set are reset)")
    for line in lineup_lines(state.settings):
        note(console, line)
    return Next.CONTINUE


def _set(state: ChatState, arg: str, console: Console) -> Next:
    key, _, value = arg.strip().partition(" ")
    if not key or not value.strip():
        error(console, f"usage: /set {'|'.join(SETTABLE)} VALUE")
        return Next.CONTINUE
    try:
        state.settings = apply_setting(state.settings, key, value)
    except ConfigError as exc:
        error(console, str(exc))
        return Next.CONTINUE
    name = setting_name(key)
    note(console, f"{name} = {show(getattr(state.settings, name))} from the next turn")
    return Next.CONTINUE


def _system(state: ChatState, arg: str, console: Console) -> Next:
    text = arg.strip()
    if not text:
        current = state.conversation.system
        note(console, f"system prompt: {current!r}" if current else "no system prompt (set one with /system TEXT)")
        return Next.CONTINUE
    system = None if text.lower() == "clear" else text
    state.settings = state.settings.with_changes(system=system)
    state.conversation.system = system
    note(console, "system prompt cleared" if system is None else "system prompt set from the next turn")
    return Next.CONTINUE


def _proposals(state: ChatState, arg: str, console: Console) -> Next:
    last = state.conversation.last
    if state.last_failed:
        # Showing the turn before would pass it off as this one's.
        note(console, "the last turn failed or was cancelled: it has no proposals (/retry runs it again)")
        return Next.CONTINUE
    if last is None:
        note(console, "no answered turn yet")
        return Next.CONTINUE
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    from moa_cli.render import markdown

    layers = sorted({p.layer for p in last.result.proposals})
    for layer in layers:
        panels: list[Any] = []
        for proposal in (p for p in last.result.proposals if p.layer == layer):
            info = f"{proposal.seconds:.1f}s"
            if proposal.usage and proposal.usage.completion_tokens is not None:
                info += f" · {proposal.usage.completion_tokens} tokens"
            title = Text(f"{proposal.model} · {info}")
            if proposal.text is not None:
                panels.append(Panel(markdown(proposal.text), title=title, title_align="left"))
            else:
                state_word = "timed out" if proposal.timed_out else "failed"
                body = Text(f"{state_word}: {proposal.error}", style="red")
                panels.append(Panel(body, title=title, title_align="left", border_style="red"))
        console.print(Text(f"layer {layer}", style="bold"))
        console.print(Group(*panels))
    return Next.CONTINUE


def _retry(state: ChatState, arg: str, console: Console) -> Next:
    if state.last_prompt is None:
        note(console, "nothing to retry yet")
        return Next.CONTINUE
    return Next.RETRY


def transcript_candidates(settings: Settings) -> Iterator[Path]:
    """Default names, dated to the second, then `-2`, `-3`, ... for saves within one second."""
    if settings.paths is None:
        raise ConfigError("/save: give a file name ending in .md or .json")
    stem = f"{datetime.now():%Y-%m-%d-%H%M%S}"
    directory = settings.paths.conversations_dir
    yield directory / f"{stem}.md"
    n = 2
    while True:
        yield directory / f"{stem}-{n}.md"
        n += 1


def save_failed(console: Console, path: Path | str, reason: str) -> Next:
    error(console, f"could not save the transcript to {path}: {reason}")
    return Next.CONTINUE


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def split_force(arg: str) -> tuple[str, bool]:
    """`t.md --force` (or `--force t.md`) -> ("t.md", True)."""
    words = arg.split()
    force = FORCE in words
    if force:
        words.remove(FORCE)
        arg = " ".join(words)
    return arg.strip(), force


def _save(state: ChatState, arg: str, console: Console) -> Next:
    """The transcript `moa logs export` writes for this conversation (Conversation.save)."""
    if not len(state.conversation):
        note(console, "nothing to save yet")
        return Next.CONTINUE
    from moa_cli.store import flush_all

    flush_all()  # the turns on their way to the log get their numbers first
    name, force = split_force(arg)
    if name:
        path = Path(name).expanduser()
        try:
            saved = state.conversation.save(path, overwrite=force)
        except FileExistsError:
            return save_failed(console, path, f"the file exists (/save {name} {FORCE} replaces it)")
        except ValueError as exc:
            return save_failed(console, path, str(exc))
        except OSError as exc:
            return save_failed(console, path, _reason(exc))
    else:
        try:
            candidates = transcript_candidates(state.settings)
        except ConfigError as exc:
            error(console, str(exc))
            return Next.CONTINUE
        path = next(candidates)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                try:
                    saved = state.conversation.save(path)
                    break
                except FileExistsError:  # saved earlier within the same second
                    path = next(candidates)
        except OSError as exc:
            return save_failed(console, path, _reason(exc))
    turns = len(state.conversation)
    note(console, f"saved {turns} turn{'' if turns == 1 else 's'} to {saved}")
    return Next.CONTINUE


# ---------------------------------------------------------------------------- the log (store/)


def _logged_turns(state: ChatState, *, with_calls: bool = False) -> list[Any] | None:
    """This conversation's logged turns (any pending write flushed first); None without a log."""
    from moa_cli.store import StoreError, db_path, flush_all, open_store

    flush_all()  # the last turn may still be on its way to the file
    paths = state.settings.paths
    if paths is None or state.conversation_id is None or not db_path(paths.data_dir).exists():
        return None
    try:
        with open_store(paths.data_dir, create=False) as store:
            turns = store.turns(limit=10_000, conversation_id=state.conversation_id)[::-1]
            if with_calls:
                for turn in turns:
                    if turn.id is not None:
                        turn.calls = store.calls(turn.id)
            return turns
    except StoreError:
        return None


def _history(state: ChatState, arg: str, console: Console) -> Next:
    from moa_cli.pricing import cost_text

    turns = _logged_turns(state)
    if not turns:
        note(
            console,
            "nothing logged in this conversation yet"
            if turns is not None or state.settings.log
            else "the log is off (--no-log)",
        )
        return Next.CONTINUE
    for turn in turns:
        prompt = " ".join(turn.prompt.split())
        prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        status = "" if turn.status == "ok" else f" [{turn.status}]"
        cost = cost_text(turn.priced_usd, turn.unpriced_calls)
        console.print(f"{turn.seq:>3}. turn {turn.id}  {cost}{status}  {prompt}", markup=False, highlight=False)
    cid = state.conversation_id or ""
    note(console, f"conversation {cid} · moa logs show {cid[:10]} shows it all")
    return Next.CONTINUE


def _trace(state: ChatState, arg: str, console: Console) -> Next:
    turns = _logged_turns(state, with_calls=True)
    if not turns:
        note(console, "no logged turn in this conversation yet (/trace draws the last one from the log)")
        return Next.CONTINUE
    from moa_cli.render.trace import TraceView
    from moa_cli.trace import timeline

    console.print(TraceView(timeline(turns[-1])))
    return Next.CONTINUE


def _usage(state: ChatState, arg: str, console: Console) -> Next:
    from moa_cli.pricing import cost_text

    turns = _logged_turns(state, with_calls=True)
    if turns is None:  # no log: what this session holds
        results = [e.result for e in state.conversation.exchanges]
        if not results:
            note(console, "no answered turn yet")
            return Next.CONTINUE
        last = results[-1]
        tokens = last.usage.total_tokens
        console.print(
            f"last turn: {tokens if tokens is not None else 'unknown'} tokens, "
            f"{cost_text(last.priced_usd or 0.0, last.unpriced_calls, len(last.proposals) + 1)}",
            markup=False,
            highlight=False,
        )
        priced = sum(r.priced_usd or 0.0 for r in results)
        unpriced = sum(r.unpriced_calls for r in results)
        console.print(
            f"this conversation: {len(results)} turns, {cost_text(priced, unpriced)}", markup=False, highlight=False
        )
        return Next.CONTINUE
    if not turns:
        note(console, "no turn yet")
        return Next.CONTINUE
    last = turns[-1]
    token_text = "unknown" if last.total_tokens is None else f"{last.total_tokens:,}"
    console.print(
        f"last turn ({last.status}): {token_text} tokens, {cost_text(last.priced_usd, last.unpriced_calls, len(last.calls) or None)}",
        markup=False,
        highlight=False,
    )
    for call in last.calls:
        price = "unpriced" if call.cost_usd is None else cost_text(call.cost_usd, 0)
        where = f" ({call.price_source})" if call.price_source else ""
        console.print(f"  {call.spec}: {price}{where}", markup=False, highlight=False)
    calls = sum(len(t.calls) for t in turns)
    priced = sum(t.priced_usd for t in turns)
    unpriced = sum(t.unpriced_calls for t in turns)
    console.print(
        f"this conversation: {len(turns)} turns, {cost_text(priced, unpriced, calls or None)}",
        markup=False,
        highlight=False,
    )
    return Next.CONTINUE


def _estimate(state: ChatState, arg: str, console: Console) -> Next:
    from moa_cli.recorder import estimate, load_prices

    prompt = arg.strip() or "?"
    worst = estimate(state.settings, state.conversation.messages_for(prompt), load_prices(state.settings))
    what = "this prompt" if arg.strip() else "the history (plus your prompt)"
    console.print(f"worst case of the next turn, for {what}: {worst.text()}", markup=False, highlight=False)
    if state.settings.max_cost is not None:
        note(console, f"max_cost is {state.settings.max_cost:g} USD")
    return Next.CONTINUE


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("help", "/help", "show this help", _help),
        Command("new", "/new", "start a new conversation", _new),
        Command("models", "/models", "show the line-up and settings", _models),
        Command("lineup", "/lineup [NAME]", "show or switch the named line-up (moa lineups lists them)", _lineup),
        Command("set", "/set KEY VALUE", f"change a setting for the next turns ({', '.join(SETTABLE)})", _set),
        Command("system", "/system [TEXT|clear]", "show, set or clear the system prompt", _system),
        Command("proposals", "/proposals", "what each reference said in the last turn, layer by layer", _proposals),
        Command("retry", "/retry", "run the last turn again", _retry),
        Command(
            "save",
            "/save [FILE] [--force]",
            "write the transcript to FILE.md or FILE.json (--force replaces an existing file)",
            _save,
        ),
        Command("history", "/history", "this conversation's turns in the log, with their cost", _history),
        Command("trace", "/trace", "the timeline of the last turn: one bar per model call", _trace),
        Command("usage", "/usage", "tokens and cost of the last turn and of this conversation", _usage),
        Command(
            "estimate",
            "/estimate [PROMPT]",
            "the worst-case cost of the next turn (every call at max_tokens)",
            _estimate,
        ),
        Command("exit", "/exit", "quit (also exit, quit, Ctrl-D)", _exit),
    )
}


ALIASES = {"quit": "exit", "q": "exit", "clear": "new", "reset": "new"}

# ---------------------------------------------------------------------------- dispatch


def parse(line: str) -> tuple[str, str] | None:
    """(command name, argument text) if `line` is a slash command, else None.

    A lone "/" is read as /help: sent to the models, it would cost a whole turn.
    """
    if line.strip() == "/":
        return "help", ""
    match = _COMMAND.match(line.strip())
    return (match.group(1).lower(), match.group(2)) if match else None


def is_exit(line: str) -> bool:
    return line.strip().lower() in EXIT_WORDS


def find(name: str) -> Command | None:
    """The command called `name` (or one of its aliases), if any."""
    return COMMANDS.get(name) or COMMANDS.get(ALIASES.get(name, ""))


@dataclass(frozen=True, slots=True)
class Line:
    """What one input line is: `kind` "empty", "exit", "command" or "prompt"."""

    kind: str
    text: str = ""  # the command line, or the prompt to send


def read(line: str, *, known_only: bool = False) -> Line:
    """Tell a command from a prompt.

    `//text` sends "/text". With `known_only` (stdin not a terminal) a line naming no
    known command is a prompt; otherwise it is a command, and `run` says "did you mean".
    """
    text = line.strip()
    if not text:
        return Line("empty")
    if is_exit(text):
        return Line("exit")
    if text.startswith("//"):
        return Line("prompt", text[1:])
    parsed = parse(text)
    if parsed is None or (known_only and find(parsed[0]) is None):
        return Line("prompt", text)
    return Line("command", text)


def run(line: str, state: ChatState, console: Console) -> Next:
    """Run one slash command line."""
    parsed = parse(line)
    if parsed is None:
        raise ValueError(f"not a slash command: {line!r}")
    name, arg = parsed
    command = find(name)
    if command is None:
        hint = closest(name, list(COMMANDS))
        more = f"; did you mean /{hint}?" if hint else ""
        error(console, f"unknown command /{name}{more} (/help lists the commands)")
        return Next.CONTINUE
    return command.run(state, arg, console)


def completions(text: str) -> list[str]:
    """Completions for the text before the cursor: command names, then /set keys."""
    if not text.startswith("/"):
        return []
    if " " not in text:
        return [f"/{name}" for name in COMMANDS if f"/{name}".startswith(text.lower())]
    name, _, rest = text[1:].partition(" ")
    if name.lower() == "set" and " " not in rest.lstrip():
        return [key for key in SETTABLE if key.startswith(rest.lstrip().lower())]
    return []
