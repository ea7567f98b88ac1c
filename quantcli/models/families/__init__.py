"""One module per model family; importing this package registers every adapter."""
from . import llama  # noqa: F401
