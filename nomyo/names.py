"""Model names as Ollama resolves them.

Ollama treats `llama3` and `llama3:latest` as one model and matches names case-insensitively,
so the router keys every table by the normalised form and echoes the client's own spelling back.
"""


def normalize_model(name: str) -> str:
    """`Llama3` -> `llama3:latest`; `ns/model:tag` keeps its tag; a registry host's port is not a tag."""

    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    if name and ":" not in last:
        name += ":latest"
    return name
