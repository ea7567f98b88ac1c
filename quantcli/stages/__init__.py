"""The pipeline's stages: download, quantize (read -> transform -> kernel -> pack), verify, publish."""
