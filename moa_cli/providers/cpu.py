"""Whether llama.cpp may repack a model's weights for this CPU: one decision, made here.

llama.cpp copies weights into CPU-specific layouts at load time ("extra buffer types":
the AMX tiles on Intel Xeons of the Sapphire Rapids class and later, and the interleaved
Q4_0/Q8_0 layouts for AVX2 and NEON). Its AMX path crashes the process (SIGSEGV at the
first decode; upstream ggml-org/llama.cpp#20824, seen by ollama and dspy on the same CPUs,
and on this project's 2-core cloud VMs). Turning the extra buffer types off
(`use_extra_bufts = False` in the model params) avoids it at no cost for the bundled
model: its Q4_1 weights have no repacked layout on x86, so only AMX would have taken them.

Precedence, highest first: `MOA_LOCAL_REPACK` (`1`/`0`, `true`/`false`, `on`/`off`, or
`auto`), `repack = true|false` under `[providers.local]`, then the CPU: off where the CPU
has AMX, llama.cpp's own default (on) elsewhere. `choose_repack` takes the CPU's flags as
an argument, so tests decide for an AMX CPU and for one without on any machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: CPU flags (as /proc/cpuinfo spells them) of the features whose repacking crashes llama.cpp.
CRASHING_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
#: Where the crash is tracked upstream, for the reason shown by `moa models --local`.
UPSTREAM_ISSUE = "ggml-org/llama.cpp#20824"
#: The environment variable that forces the decision (read by config.py, like every variable).
REPACK_ENV = "MOA_LOCAL_REPACK"


@dataclass(frozen=True, slots=True)
class RepackChoice:
    """Whether repacking is on, and a sentence saying why (for `moa models --local` and logs)."""

    enabled: bool
    reason: str


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags; empty where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def choose_repack(flags: Iterable[str], setting: bool | None = None, source: str = "") -> RepackChoice:
    """Decide: a forced setting wins (`source` names where it came from), else the CPU decides."""
    if setting is not None:
        state = "on" if setting else "off"
        return RepackChoice(setting, f"{state}, as {source or 'configured'} says")
    crashing = sorted(set(flags) & set(CRASHING_FLAGS))
    if crashing:
        return RepackChoice(
            False,
            f"off: this CPU has AMX ({', '.join(crashing)}), where llama.cpp's repacking crashes "
            f"({UPSTREAM_ISSUE}); force with {REPACK_ENV}=1",
        )
    return RepackChoice(True, "on: llama.cpp's default, no AMX on this CPU")
