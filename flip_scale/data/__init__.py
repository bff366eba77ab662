"""Data pipeline: synthetic captioned data, tokenizer, transforms, streaming loader, eval sets.

Submodules are imported on demand (no heavy imports here) so `flip-scale` starts fast.
"""
