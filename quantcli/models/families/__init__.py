"""One module per model family; importing this package registers every adapter."""
from . import bert, gemma2, gemma3, llama, phi3, qwen2, qwen3  # noqa: F401
