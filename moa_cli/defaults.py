"""Built-in line-ups and known providers. Each setting's own default is declared in settings.py;
the few that a plain value type also needs (types.CompletionRequest) are named here once."""

from __future__ import annotations

# The sampling defaults: settings.py declares the settings with them, and a CompletionRequest
# built by hand gets them (types.py is plain values: it cannot import the settings).
TEMPERATURE = 0.7
MAX_TOKENS = 512
AGGREGATION = "synthesize"  # aggregation.py's strategies: settings.AGGREGATIONS

# The original MoA project's latest Together recipe.
TOGETHER_REFERENCES: tuple[str, ...] = (
    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "Qwen/Qwen2.5-72B-Instruct-Turbo",
    "Qwen/Qwen2.5-Coder-32B-Instruct",
    "deepseek-ai/DeepSeek-V3",
)
TOGETHER_AGGREGATOR = "Qwen/Qwen2.5-72B-Instruct-Turbo"

# The offline line-up (Self-MoA over the bundled model): three samples, distinct seeds.
LOCAL_MODEL = "local:smollm2"
LOCAL_REFERENCES: tuple[str, ...] = (LOCAL_MODEL, LOCAL_MODEL, LOCAL_MODEL)
LOCAL_AGGREGATOR = LOCAL_MODEL
LOCAL_MAX_TOKENS = 256
LOCAL_SEED = 1
LOCAL_AGGREGATION = "consensus"

# Named line-ups every install has; [lineups.NAME] in the config file adds or replaces them.
# Keys are setting names (settings.py); what a line-up leaves out keeps its usual value.
BUILTIN_LINEUPS: dict[str, dict[str, object]] = {
    "together": {"references": TOGETHER_REFERENCES, "aggregator": TOGETHER_AGGREGATOR},
    "local": {
        "references": LOCAL_REFERENCES,
        "aggregator": LOCAL_AGGREGATOR,
        "max_tokens": LOCAL_MAX_TOKENS,
        "seed": LOCAL_SEED,
        # Measured on IFEval, 150 prompts x 2 seeds (README, bench/results/quality.md): with
        # SmolLM2-135M, picking the sample closest to the others beats one sample, loops and
        # hits the token limit less often than one, and halves the turn; synthesizing loops.
        "aggregation": LOCAL_AGGREGATION,
    },
}

DEFAULT_PROVIDER = "together"

# Providers that need no configuration. `kind` picks the client; key_env names the env var.
BUILTIN_PROVIDERS: dict[str, dict[str, str | None]] = {
    "together": {"kind": "together", "base_url": None, "api_key_env": "TOGETHER_API_KEY"},
    "ollama": {"kind": "openai", "base_url": "http://localhost:11434/v1", "api_key_env": None},
    "openai": {"kind": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
    "openrouter": {
        "kind": "openai",
        "base_url": "https://openrouter.ai/api/v1",
        "api_key_env": "OPENROUTER_API_KEY",
    },
    "groq": {"kind": "openai", "base_url": "https://api.groq.com/openai/v1", "api_key_env": "GROQ_API_KEY"},
    "local": {"kind": "local", "base_url": None, "api_key_env": None},
}
