"""`moa serve`: Mixture-of-Agents as one model behind an OpenAI-compatible HTTP API.

    app.py        the Starlette app: routes, lifespan (one ProviderPool), CORS
    options.py    ServeOptions: what `moa serve` passes the app (and its uvicorn workers)
    schema.py     request bodies parsed and checked into moa's types (400s name the field)
    models.py     the served models: every named line-up (`moa` is the default) and passthroughs
    turns.py      one request's turn: events in, text pieces / progress / outcome out
    sse.py        chat.completion(.chunk) objects and their SSE encoding
    errors.py     every failure -> an HTTP status, headers and an OpenAI-style error body
    auth.py       bearer keys, compared in constant time
    limits.py     max concurrent turns plus a bounded queue (429 beyond it)
    lifecycle.py  drain on SIGTERM: readiness 503, in-flight turns ended at the deadline

The server keeps no state between requests: replicas and workers are interchangeable.
No rich or prompt_toolkit here; the CLI command is cli/serve.py.
"""

from __future__ import annotations
