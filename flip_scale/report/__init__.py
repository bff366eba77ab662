"""Scaling reports from run directories (`flip-scale report`): never from logs, only from the
files a run writes (config.yaml, metrics.jsonl, summary.json, eval/*.json)."""
from .runs import Run, load_run, load_runs

__all__ = ["Run", "load_run", "load_runs"]
