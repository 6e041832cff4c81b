"""nomyo-router: one Ollama- and OpenAI-compatible address in front of a fleet of LLM servers."""

__version__ = "0.1.0"
