"""Architecture adapters (HF config -> GGUF metadata, tensor names, transforms) and tokenizer export."""
