"""Wire formats of the two dialects the router speaks: Ollama's native API and OpenAI's."""
