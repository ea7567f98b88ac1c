"""File formats: the safetensors reader and the streaming GGUF writer."""
