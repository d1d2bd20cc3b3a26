"""One GGUF model in one llama.cpp context, driven through llama.cpp's C API: requests decoded together.

llama-cpp-python's `Llama` runs one sequence per context, so the Self-MoA samples of one
model (the built-in `local` line-up asks SmolLM2 three times) ran one after another. Here
every request to a model is a *sequence* of one shared context:

- its prompt is evaluated once per distinct prompt: requests with the same prompt (the
  samples of a layer) share the evaluated cells, and a prompt that starts like a sequence
  already in the context (a late joiner, or the conversation of the last turn, kept as a
  cache) copies that prefix instead of evaluating it again;
- each decoding step then evaluates the next token of every running sequence in one batch.
  A small model on a CPU is bound by reading its weights, so a step for three sequences
  costs about 1.2 times a step for one on two threads (17.8 against 15 ms here): three
  256-token samples take 4.5 s instead of 11.

Requests can join between steps (continuous batching), so `moa serve` clients share the
model too. Sampling is llama.cpp's own sampler chain, built in the order llama-cpp-python
builds it (penalties, top-k 40, typical, top-p 0.95, min-p 0.05, temperature, seeded
draw), one chain per sequence: a greedy request gives llama-cpp-python's answer, and a
seeded one is the same from run to run.

Everything here runs on the model's one worker thread (see providers/local.py): a llama.cpp
context is not thread-safe. A sequence's `emit` and `done` are how its output leaves.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from moa_cli.diagnostics import logger
from moa_cli.errors import ProviderError
from moa_cli.stops import StopMatcher
from moa_cli.types import Finish, Message, Usage

#: How many sequences one context holds at once (running ones and kept prefixes).
MAX_SEQUENCES = 16
#: Finished sequences whose cells stay in the context, so the next prompt that starts the
#: same way (the next turn of a conversation) copies them instead of evaluating them again.
KEPT_PREFIXES = 2
#: A shorter shared prefix is not worth a copy.
MIN_SHARED_PREFIX = 16
#: llama-cpp-python's sampling defaults, so answers match what `Llama` gave.
TOP_K, TOP_P, MIN_P, TYPICAL_P, PENALTY_LAST_N = 40, 0.95, 0.05, 1.0, 64
#: Steps measured together before their speed is reported to the thread chooser.
STEPS_PER_MEASURE = 16
#: Flash attention off (llama.cpp's "auto" turns it on for a CPU), as llama-cpp-python's `Llama`
#: has it: the same logits, so a greedy answer is the one `Llama` gives. Measured both ways here.
FLASH_ATTENTION = 0
#: When a GGUF file carries no chat template: ChatML, llama.cpp server's own fallback.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ThreadChooser(Protocol):
    """How many threads a batch of more than one token gets (providers/local.py's PromptThreads)."""

    def choose(self) -> int: ...

    def record(self, threads: int, tokens: int, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float
    seed: int | None = None
    top_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None  # OpenAI's meanings, as llama.cpp's penalties sampler has them
    frequency_penalty: float | None = None
    grammar: str | None = None  # GBNF (root rule `root`): only tokens it allows are sampled


@dataclass(eq=False)
class Request:
    """One request's sequence: what to evaluate, how to sample, and where its output goes.

    `emit` receives the text pieces, then a Finish, then the Usage; `done` is called once,
    last, with None or the ProviderError that ended it. Setting `stopped` ends it at the next
    prompt batch or step, with no more output. Both callbacks run on the worker thread.
    """

    model: str
    prompt: list[int]
    max_tokens: int | None
    sampling: Sampling
    stop_strings: tuple[str, ...]
    emit: Callable[[str | Finish | Usage], None]
    done: Callable[[ProviderError | None], None]
    stopped: threading.Event = field(default_factory=threading.Event)
    # The worker's state.
    seq_id: int = -1
    kv: list[int] = field(default_factory=list)  # the tokens in the context, at positions 0..len-1
    reused: int = 0  # prompt tokens copied from another sequence's cells, not evaluated for it
    limit: int = 0  # tokens it may generate
    generated: int = 0
    next_token: int = -1  # sampled, not yet evaluated
    sampler: Any = None
    text: _Text | None = None
    finished: bool = False


class _Text:
    """Bytes of token pieces in, text out: UTF-8 split across tokens, and stop strings held back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopMatcher(tuple(s for s in stops if s))

    def feed(self, data: bytes, final: bool = False) -> tuple[str, bool]:
        """The text that is safe to show, and whether a stop string ended it."""
        text, stopped = self._stops.feed(self._decoder.decode(data, final))
        if final and not stopped:
            text += self._stops.flush()
        return text, stopped


class LoadError(Exception):
    """The file could not be loaded (damaged, or not a model this llama.cpp knows)."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    size = min(len(a), len(b))
    for i in range(size):
        if a[i] != b[i]:
            return i
    return size


class Runtime:
    """A loaded model, its context and its sequences.

    `run` and everything it calls belong to one thread (the model's worker). `prompt` only
    reads the vocabulary and the template, so the event loop may call it meanwhile.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_context: int,
        batch: int,
        generation_threads: int,
        prompt_threads: ThreadChooser,
        step_threads: ThreadChooser,
        repack: bool = True,
    ) -> None:
        import llama_cpp

        if batch < MAX_SEQUENCES:
            # A step puts one token of every running sequence in the batch, and ctypes does not
            # check an index past its end: it would write over whatever follows in memory.
            raise ValueError(f"a batch of {batch} tokens cannot hold a step of {MAX_SEQUENCES} sequences")
        self._llama = llama = llama_cpp
        self._n_batch = batch
        self._generation_threads = generation_threads
        self._prompt_threads = prompt_threads
        self._step_threads = step_threads
        self._threads: tuple[int, int] | None = None
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        model_params = llama.llama_model_default_params()
        # Weights repacked for the CPU (AMX tiles, interleaved Q4_0): providers/cpu.py decides,
        # as llama.cpp's AMX path crashes the process.
        model_params.use_extra_bufts = repack
        self._model = llama.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise LoadError(path)
        try:
            trained = llama.llama_model_n_ctx_train(self._model)
            n_ctx = min(max_context, trained) if trained > 0 else max_context
            params = llama.llama_context_default_params()
            params.n_ctx = n_ctx
            params.n_batch = params.n_ubatch = batch
            params.n_seq_max = MAX_SEQUENCES
            params.flash_attn_type = FLASH_ATTENTION
            params.kv_unified = True  # one pool of cells for every sequence, so shared prompts are stored once
            params.n_threads = params.n_threads_batch = generation_threads
            self._ctx = llama.llama_init_from_model(self._model, params)
            if not self._ctx:
                raise LoadError(path)
            self.n_ctx: int = llama.llama_n_ctx(self._ctx)
            self._vocab = llama.llama_model_get_vocab(self._model)
            self._n_vocab = llama.llama_vocab_n_tokens(self._vocab)
            self._memory = llama.llama_get_memory(self._ctx)
            # A recurrent or hybrid model's memory copies whole states: no prefix can be cut out.
            self._whole_state = bool(
                llama.llama_model_is_recurrent(self._model) or llama.llama_model_is_hybrid(self._model)
            )
            self._batch = llama.llama_batch_init(batch, 0, 1)
            self._formatter = self._chat_formatter()
        except BaseException:
            self.close()
            raise
        self._free_ids = list(range(MAX_SEQUENCES))
        self._kept: deque[Request] = deque()  # finished sequences whose cells are kept, oldest first
        self._groups: list[list[Request]] = []  # requests admitted together, sharing their prompt's cells
        self._steps = [0, 0, 0, 0.0]  # threads, steps, tokens, seconds of the steps being measured
        #: Tokens evaluated so far (prompts and steps), and the steps: how tests see the work done.
        self.evaluated = 0
        self.steps = 0

    # ------------------------------------------------------------------------ prompts

    def _chat_formatter(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self._llama
        raw = llama.llama_model_chat_template(self._model, None)
        template = raw.decode("utf-8", "replace") if raw else CHATML

        def text(token: int) -> str:
            return bytes(llama.llama_vocab_get_text(self._vocab, token) or b"").decode("utf-8", "replace")

        eos, bos = llama.llama_vocab_eos(self._vocab), llama.llama_vocab_bos(self._vocab)
        return Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos), stop_token_ids=[eos])

    def prompt(self, messages: Sequence[Message]) -> tuple[list[int], tuple[str, ...]]:
        """The tokens of a chat prompt in the model's template, and the template's stop strings."""
        formatted = self._formatter(messages=list(messages))
        stops = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop] if formatted.stop else []
        return self._tokenize(formatted.prompt, add_special=not formatted.added_special), tuple(stops)

    def _tokenize(self, text: str, *, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 8
        while True:
            tokens = (self._llama.llama_token * size)()
            count = self._llama.llama_tokenize(self._vocab, data, len(data), tokens, size, add_special, True)
            if count >= 0:
                return list(tokens[:count])
            size = -count

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:  # a longer piece than the buffer: ask again with room for it
            buffer = ctypes.create_string_buffer(-size)
            size = self._llama.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    # ------------------------------------------------------------------------ the loop

    def run(self, take: Callable[[bool], list[Request]]) -> None:
        """Decode until no request is running or waiting.

        `take(idle)` hands over the requests that arrived since it was last called; with
        idle=True (nothing running or waiting here) an empty answer ends the run, so the
        caller decides under its own lock whether one more request slipped in.
        """
        active: list[Request] = []
        waiting: deque[Request] = deque()
        while True:
            waiting.extend(take(not active and not waiting))
            if not active and not waiting:
                return
            try:
                self._retire_stopped(active, waiting)
                self._admit(waiting, active)
                if active:
                    self._step(active)
            except Exception as exc:  # noqa: BLE001 - llama.cpp failed: every request here ends with it
                logger.debug("llama.cpp failed: {!r}", exc)
                starting = [r for group in self._groups for r in group]  # taken from waiting, not yet active
                for request in dict.fromkeys([*active, *waiting, *starting]):
                    self._free_sampler(request)
                    if not request.finished:
                        request.finished = True
                        request.done(ProviderError(request.model, f"llama.cpp error: {exc}"))
                active.clear()
                waiting.clear()
                self._reset()

    def _retire_stopped(self, active: list[Request], waiting: deque[Request]) -> None:
        """Requests cancelled since the last look end now: running ones drop their sequence."""
        for request in [r for r in waiting if r.stopped.is_set()]:
            waiting.remove(request)
            request.finished = True
            request.done(None)
        active[:] = [r for r in active if not self._retire_if_stopped(r)]

    def _admit(self, waiting: deque[Request], active: list[Request]) -> None:
        """Start the waiting requests that fit, oldest first; identical prompts together."""
        while waiting:
            first = waiting[0]
            if len(first.prompt) >= self.n_ctx:
                waiting.popleft()
                first.finished = True
                reason = f"the prompt is {len(first.prompt)} tokens, too long for this model's context of {self.n_ctx} tokens"
                first.done(ProviderError(first.model, reason))
                continue
            group = [r for r in waiting if r.prompt == first.prompt and not r.stopped.is_set()]
            source = self._longest_prefix(first.prompt, active)[0]  # kept last, if it must go
            while len(self._free_ids) < len(group) and self._evict(source):
                pass
            group = group[: len(self._free_ids)]
            if not group:
                return  # every id is running: wait for a sequence to end
            room = self.n_ctx - len(first.prompt)
            for request in group:
                request.limit = room if request.max_tokens is None else max(1, min(request.max_tokens, room))
            while self._fitting(group) < len(group) and self._evict(source):
                pass
            fitting = self._fitting(group)
            if not fitting:
                if active:
                    return  # wait for running sequences to make room
                # Alone and still too big: one sequence, its answer cut where the context ends.
                fitting = 1
            group = group[:fitting]
            for request in group:
                waiting.remove(request)
                request.seq_id = self._free_ids.pop(0)
            self._start(group, active)

    def _fitting(self, group: list[Request]) -> int:
        """How many of the group fit in the cells left: its prompt once, each answer to its limit."""
        left = self.n_ctx - self._reserved() - len(group[0].prompt)
        count = 0
        for request in group:
            left -= request.limit
            if left < 0:
                break
            count += 1
        return count

    def _evict(self, protect: Request | None) -> bool:
        """Drop the oldest kept prefix, `protect` (the one a waiting prompt would copy) last."""
        if not self._kept:
            return False
        victim = next((k for k in self._kept if k is not protect), self._kept[0])
        self._kept.remove(victim)
        self._drop(victim)
        return True

    def _reserved(self) -> int:
        """Cells the running groups may use (prompts, and every answer to its limit) and kept prefixes hold."""
        running = sum(len(group[0].prompt) + sum(r.limit for r in group if not r.finished) for group in self._groups)
        return running + sum(len(kept.kv) for kept in self._kept)

    def _start(self, group: list[Request], active: list[Request]) -> None:
        """Evaluate the group's prompt once, give every member its copy, and sample each first token."""
        llama = self._llama
        lead, prompt = group[0], group[0].prompt
        source, shared = self._longest_prefix(prompt, active)
        shared = min(shared, len(prompt) - 1) // self._n_batch * self._n_batch
        self._groups.append(group)
        if source is not None and shared >= MIN_SHARED_PREFIX:
            llama.llama_memory_seq_cp(self._memory, source.seq_id, lead.seq_id, 0, shared)
            lead.kv = list(prompt[:shared])
            lead.reused = shared
            if source in self._kept:  # its cells now belong to the lead
                self._kept.remove(source)
                self._drop(source)
        elif len(self._groups) == 1:
            # Nothing running and nothing to copy: start from an empty context. Where cells sit
            # changes the last bits of attention, so this makes an answer the same as in a fresh
            # process, whatever ran before (the same question again gives the same samples).
            self._clear()
        stopped = lambda: all(r.stopped.is_set() for r in group)  # noqa: E731
        if not self._evaluate(lead, prompt[len(lead.kv) :], stopped, active):
            for request in group:
                self._release(request)
                request.finished = True
                request.done(None)
            return
        last = self._batch.n_tokens - 1
        for request in group[1:]:  # right after the lead's prompt: a whole-state copy is right too
            llama.llama_memory_seq_cp(self._memory, lead.seq_id, request.seq_id, 0, len(prompt))
            request.kv = list(prompt)
            request.reused = len(prompt)
        for request in group:
            request.sampler = self._sampler(request.sampling)
            request.text = _Text(request.stop_strings)
            self._accept(request, llama.llama_sampler_sample(request.sampler, self._ctx, last))
            if not request.finished:
                active.append(request)

    def _longest_prefix(self, prompt: list[int], active: list[Request]) -> tuple[Request | None, int]:
        """The sequence whose cells this prompt can copy the most of, and how many.

        Only whole prompt batches of the source's own prompt count: then the batches evaluated
        here are the ones a fresh evaluation would run, and the answer is the same as without the
        copy (cells written by decoding steps, or a batch cut elsewhere, differ in the last bits).
        Never for a recurrent or hybrid model, whose state cannot be cut at a position.
        """
        best: tuple[Request | None, int] = (None, 0)
        if self._whole_state:
            return best
        for candidate in [*active, *self._kept]:
            usable = min(_common_prefix(candidate.kv, prompt), len(candidate.prompt))
            usable = usable // self._n_batch * self._n_batch
            if usable > best[1]:
                best = (candidate, usable)
        return best

    def _evaluate(
        self, request: Request, tokens: Sequence[int], stopped: Callable[[], bool], active: list[Request]
    ) -> bool:
        """Evaluate a prompt for one sequence, a batch at a time; False if it was stopped first.

        Between batches, running sequences that were cancelled meanwhile end too: a long prompt
        joining must not hold up a cancel.
        """
        for start in range(0, len(tokens), self._n_batch):
            active[:] = [r for r in active if not self._retire_if_stopped(r)]
            if stopped():
                return False
            chunk = tokens[start : start + self._n_batch]
            final = start + len(chunk) == len(tokens)
            base = len(request.kv)
            self._fill(
                [(token, base + i, request.seq_id, final and i == len(chunk) - 1) for i, token in enumerate(chunk)]
            )
            threads = self._prompt_threads.choose() if len(chunk) > 1 else self._generation_threads
            began = time.perf_counter()
            self._decode(threads)
            if len(chunk) > 1:
                self._prompt_threads.record(threads, len(chunk), time.perf_counter() - began)
            request.kv.extend(chunk)
        return True

    def _step(self, active: list[Request]) -> None:
        """Evaluate each running sequence's sampled token in one batch, and sample the next."""
        self._fill([(r.next_token, len(r.kv), r.seq_id, True) for r in active])
        several = len(active) > 1
        threads = self._step_threads.choose() if several else self._generation_threads
        began = time.perf_counter()
        self._decode(threads)
        self.steps += 1
        if several:
            self._measure_step(threads, len(active), time.perf_counter() - began)
        sample = self._llama.llama_sampler_sample
        for index, request in enumerate(active):
            request.kv.append(request.next_token)
            self._accept(request, sample(request.sampler, self._ctx, index))
        active[:] = [r for r in active if not r.finished]

    def _measure_step(self, threads: int, tokens: int, seconds: float) -> None:
        """Report step speeds to the chooser in bunches (one step is too short to say anything)."""
        if self._steps[0] != threads:
            self._steps = [threads, 0, 0, 0.0]
        self._steps[1] += 1
        self._steps[2] += tokens
        self._steps[3] += seconds
        if self._steps[1] >= STEPS_PER_MEASURE:
            self._step_threads.record(threads, int(self._steps[2]), float(self._steps[3]))
            self._steps = [threads, 0, 0, 0.0]

    def _fill(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(items)
        for i, (token, position, seq_id, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = logits

    def _decode(self, threads: int) -> None:
        if self._threads != (self._generation_threads, threads):
            self._threads = (self._generation_threads, threads)
            self._llama.llama_set_n_threads(self._ctx, self._generation_threads, threads)
        status = self._llama.llama_decode(self._ctx, self._batch)
        if status == 1 and self._kept:  # no room: the kept prefixes go first
            while self._kept:
                self._drop(self._kept.popleft())
            status = self._llama.llama_decode(self._ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}" + (" (the context is full)" if status == 1 else ""))
        self.evaluated += self._batch.n_tokens

    # ------------------------------------------------------------------------ tokens out

    def check_grammar(self, grammar: str) -> bool:
        """Whether llama.cpp compiles this GBNF grammar (it only reads the vocabulary)."""
        sampler = self._llama.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
        if not sampler:
            return False
        self._llama.llama_sampler_free(sampler)
        return True

    def _sampler(self, sampling: Sampling) -> Any:
        llama = self._llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        penalty = 1.0 if sampling.repeat_penalty is None else sampling.repeat_penalty
        frequency, presence = sampling.frequency_penalty or 0.0, sampling.presence_penalty or 0.0
        parts = [llama.llama_sampler_init_penalties(self._n_vocab, PENALTY_LAST_N, penalty, frequency, presence)]
        if sampling.grammar is not None:  # first: what follows picks among the tokens it allows
            grammar = llama.llama_sampler_init_grammar(self._vocab, sampling.grammar.encode(), b"root")
            if not grammar:  # checked on submit (check_grammar): only a changed llama.cpp gets here
                raise RuntimeError("llama.cpp could not compile the grammar")
            parts.insert(0, grammar)
        if sampling.temperature <= 0:
            parts.append(llama.llama_sampler_init_greedy())
        else:
            seed = llama.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed & 0xFFFFFFFF
            top_p = TOP_P if sampling.top_p is None else sampling.top_p
            parts += [
                llama.llama_sampler_init_top_k(TOP_K),
                llama.llama_sampler_init_typical(TYPICAL_P, 1),
                llama.llama_sampler_init_top_p(top_p, 1),
                llama.llama_sampler_init_min_p(MIN_P, 1),
                llama.llama_sampler_init_temp(sampling.temperature),
                llama.llama_sampler_init_dist(seed),
            ]
        for part in parts:
            llama.llama_sampler_chain_add(chain, part)  # the chain owns and frees them
        return chain

    def _accept(self, request: Request, token: int) -> None:
        """Take a sampled token: the end of the answer, or text to emit and a token to evaluate."""
        assert request.text is not None
        if request.stopped.is_set():
            self._end(request, None)
            return
        if self._llama.llama_vocab_is_eog(self._vocab, token):
            self._end(request, "stop")
            return
        request.generated += 1
        text, hit_stop = request.text.feed(self._piece(token))
        if text:
            request.emit(text)
        if hit_stop:
            self._end(request, "stop", flush=False)
        elif request.generated >= request.limit:
            self._end(request, "length")
        else:
            request.next_token = token

    def _end(self, request: Request, reason: str | None, *, flush: bool = True) -> None:
        """Finish a sequence: the rest of its text, its Finish and Usage (unless it was stopped)."""
        if reason is not None:
            assert request.text is not None
            if flush:
                rest, _ = request.text.feed(b"", final=True)
                if rest:
                    request.emit(rest)
            request.emit(Finish(reason))
            prompt = len(request.prompt)
            request.emit(Usage(prompt, request.generated, prompt + request.generated, cached_tokens=request.reused))
        self._release(request)
        request.finished = True
        request.done(None)

    def _retire_if_stopped(self, request: Request) -> bool:
        if request.stopped.is_set() and not request.finished:
            self._end(request, None)
        return request.finished

    def _free_sampler(self, request: Request) -> None:
        if request.sampler is not None:
            self._llama.llama_sampler_free(request.sampler)
            request.sampler = None

    def _release(self, request: Request) -> None:
        """Give the sequence's id back; the last of its group is kept as a prefix for later prompts.

        What is kept is the part a later prompt can copy: whole prompt batches of its prompt.
        """
        self._free_sampler(request)
        group = next((g for g in self._groups if request in g), None)
        last_of_group = group is not None and all(r.finished or r is request for r in group)
        if group is not None and last_of_group:
            self._groups.remove(group)
        usable = min(len(request.kv), len(request.prompt)) // self._n_batch * self._n_batch
        if last_of_group and usable >= MIN_SHARED_PREFIX and not self._whole_state:
            self._llama.llama_memory_seq_rm(self._memory, request.seq_id, usable, -1)
            request.kv = request.kv[:usable]
            self._kept.append(request)
            while len(self._kept) > KEPT_PREFIXES:
                self._drop(self._kept.popleft())
        else:
            self._drop(request)

    def _drop(self, request: Request) -> None:
        if request.seq_id >= 0:
            self._llama.llama_memory_seq_rm(self._memory, request.seq_id, -1, -1)
            self._free_ids.append(request.seq_id)
            request.seq_id = -1

    def _clear(self) -> None:
        """An empty context: kept prefixes dropped, cells from the first one on (call with nothing running)."""
        while self._kept:
            self._drop(self._kept.popleft())
        self._llama.llama_memory_clear(self._memory, True)

    def _reset(self) -> None:
        """After a failure: an empty context, every id free."""
        self._llama.llama_memory_clear(self._memory, True)
        self._kept.clear()
        self._groups.clear()
        self._free_ids = list(range(MAX_SEQUENCES))

    def close(self) -> None:
        llama = self._llama
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None


#: The llama-cpp-python release this driver is written against (pyproject.toml pins it exactly):
#: its ctypes bindings changed signatures within 0.3.x, and ctypes checks none of them.
PINNED_VERSION = "0.3.36"

#: Every C function the driver calls, and how many arguments it passes. `check_runtime`
#: compares each with the binding's `argtypes`, and a test checks that every call in this
#: file passes exactly this many: a binding that changed under the pin is refused at start.
DRIVER_FUNCTIONS: dict[str, int] = {
    "llama_batch_free": 1,
    "llama_batch_init": 3,
    "llama_context_default_params": 0,
    "llama_decode": 2,
    "llama_free": 1,
    "llama_get_memory": 1,
    "llama_init_from_model": 2,
    "llama_log_set": 2,
    "llama_memory_clear": 2,
    "llama_memory_seq_cp": 5,
    "llama_memory_seq_rm": 4,
    "llama_model_chat_template": 2,
    "llama_model_default_params": 0,
    "llama_model_free": 1,
    "llama_model_get_vocab": 1,
    "llama_model_is_hybrid": 1,
    "llama_model_is_recurrent": 1,
    "llama_model_load_from_file": 2,
    "llama_model_n_ctx_train": 1,
    "llama_n_ctx": 1,
    "llama_sampler_chain_add": 2,
    "llama_sampler_chain_default_params": 0,
    "llama_sampler_chain_init": 1,
    "llama_sampler_free": 1,
    "llama_sampler_init_dist": 1,
    "llama_sampler_init_grammar": 3,
    "llama_sampler_init_greedy": 0,
    "llama_sampler_init_min_p": 2,
    "llama_sampler_init_penalties": 5,
    "llama_sampler_init_temp": 1,
    "llama_sampler_init_top_k": 1,
    "llama_sampler_init_top_p": 2,
    "llama_sampler_init_typical": 2,
    "llama_sampler_sample": 3,
    "llama_set_n_threads": 3,
    "llama_token_to_piece": 6,
    "llama_tokenize": 7,
    "llama_vocab_bos": 1,
    "llama_vocab_eos": 1,
    "llama_vocab_get_text": 2,
    "llama_vocab_is_eog": 2,
    "llama_vocab_n_tokens": 1,
}

#: Every struct field the driver reads or writes.
DRIVER_FIELDS: dict[str, tuple[str, ...]] = {
    "llama_model_params": ("use_extra_bufts",),
    "llama_context_params": (
        "n_ctx",
        "n_batch",
        "n_ubatch",
        "n_seq_max",
        "flash_attn_type",
        "kv_unified",
        "n_threads",
        "n_threads_batch",
    ),
    "llama_batch": ("n_tokens", "token", "pos", "n_seq_id", "seq_id", "logits"),
}


def check_bindings(module: Any) -> str | None:
    """What in `module` (llama_cpp, or a stand-in in tests) differs from what the driver calls, or None."""
    for name, arity in DRIVER_FUNCTIONS.items():
        function = getattr(module, name, None)
        if function is None:
            return f"it has no {name}"
        argtypes = getattr(function, "argtypes", None)
        if argtypes is not None and len(argtypes) != arity:
            return f"its {name} takes {len(argtypes)} arguments, where moa passes {arity}"
    for struct, names in DRIVER_FIELDS.items():
        have = {entry[0] for entry in getattr(getattr(module, struct, None), "_fields_", ())}
        for name in names:
            if name not in have:
                return f"its {struct} has no field {name}"
    return None


def check_runtime(module: Any = None) -> str | None:
    """Why the installed llama-cpp-python cannot run this driver (one line naming its version), or None."""
    if module is None:
        import llama_cpp as module
    version = getattr(module, "__version__", "?")
    problem = check_bindings(module)
    if problem:
        return (
            f"llama-cpp-python {version} does not match moa's llama.cpp driver ({problem}); "
            f'moa is built for {PINNED_VERSION}: pip install "llama-cpp-python=={PINNED_VERSION}"'
        )
    if version != PINNED_VERSION:
        logger.debug("llama-cpp-python {} (moa pins {}): its bindings match the driver", version, PINNED_VERSION)
    return None
