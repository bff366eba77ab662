"""Evaluation: zero-shot classification and image-text retrieval (CLIP_benchmark metric names)."""
from .retrieval import evaluate_retrieval, retrieval_recalls
from .zeroshot import class_embeddings, evaluate_zeroshot

__all__ = ["evaluate_zeroshot", "evaluate_retrieval", "class_embeddings", "retrieval_recalls"]
