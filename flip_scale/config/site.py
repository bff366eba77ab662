"""Site files: the one place a cluster's paths live (`--site FILE` or FLIP_SITE).

    data: {tokenizer: /p/bert-base-uncased/vocab.txt}
    eval: {zeroshot: /p/eval/imagenet1k, retrieval: [/p/eval/flickr30k, /p/eval/mscoco_captions]}
    datasets:                  # chosen by the recipe's data.dataset
      laion400m: {data: {train_shards: /p/laion400m/manifest.json}}
      laion2b:   {data: {train_shards: /p/relaion2b/manifest.json}}

Recipes stay portable (they name their data symbolically in data.dataset); the site file is
applied after the recipe chain and before command-line overrides, to every job a command builds,
rows and tuning alike. The resolved config records the file's path and sha256 (site.file,
site.sha256) so a run says which paths it was given.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SITE_ENV = "FLIP_SITE"
DATASETS = "datasets"


@dataclass
class Site:
    """A parsed site file: sections for every job, and per-dataset sections chosen by data.dataset."""

    path: str                                               # absolute path, as recorded in site.file
    sha256: str                                             # of the file's bytes
    common: dict = field(default_factory=dict)              # recipe sections applied to every job
    datasets: dict = field(default_factory=dict)            # data.dataset value -> recipe sections

    @property
    def source(self) -> str:
        return f"site file {self.path}"

    def layers(self, dataset: str | None) -> list[tuple[dict, str]]:
        """(sections, where they came from) in the order they apply for a recipe of `dataset`."""
        # Copies: merging hands sub-dicts to the recipe, and one Site serves every row of a study.
        out = [(copy.deepcopy(self.common), self.source)] if self.common else []
        if dataset is not None and dataset in self.datasets:
            out.append((copy.deepcopy(self.datasets[dataset]), f"{self.source} (datasets.{dataset})"))
        out.append(({"site": {"file": self.path, "sha256": self.sha256}}, self.source))
        return out


def site_path(arg: str | None) -> str | None:
    """The site file a command uses: its --site argument, else FLIP_SITE (empty = none)."""
    return arg or os.environ.get(SITE_ENV) or None


def load_site(path: str | os.PathLike) -> Site:
    """Read and check a site file: every key must be a recipe key (one-line ConfigError naming the file)."""
    from .load import ConfigError, _build, yaml_error_line
    from .schema import Config

    p = Path(path).expanduser().resolve()
    where = f"site file {p}"
    if not p.is_file():
        raise ConfigError(f"{where}: not found (--site or {SITE_ENV})")
    raw = p.read_bytes()
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(where, e)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of recipe sections and `datasets:`")
    datasets = data.pop(DATASETS, None) or {}
    if not isinstance(datasets, dict) or not all(isinstance(v, dict) for v in datasets.values()):
        raise ConfigError(f"{where}: datasets: must map a data.dataset name to recipe sections "
                          f"(e.g. laion400m: {{data: {{train_shards: ...}}}})")
    if "site" in data:
        raise ConfigError(f"{where}: unknown key 'site' (site.file / site.sha256 are recorded, not set)")
    # Type- and key-check each layer as a recipe would be (no cross-key validation: a layer is partial).
    _build(Config, data, {}, where)
    for name, sections in datasets.items():
        if "site" in sections or DATASETS in sections:
            raise ConfigError(f"{where}: datasets.{name}: only recipe sections (data, eval, ...) belong here")
        _build(Config, sections, {}, f"{where} (datasets.{name})")
    return Site(str(p), hashlib.sha256(raw).hexdigest(), data, {str(k): v for k, v in datasets.items()})
