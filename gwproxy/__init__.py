"""gwproxy: an OpenAI-compatible gateway for self-hosted vLLM."""

__version__ = "0.1.0"
