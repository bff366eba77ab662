"""Evaluation datasets: the CLIP_benchmark webdataset layout and ImageFolder directories.

CLIP_benchmark layout (INTERFACE.md):
    DIR/test/nshards.txt, DIR/test/0.tar .. N-1.tar, DIR/classnames.txt,
    DIR/zeroshot_classification_templates.txt ({c} marks the class), DIR/dataset_type.txt
    ("retrieval" for retrieval sets). Classification samples: KEY.{jpg,png,webp} + KEY.cls;
    retrieval samples: image + KEY.txt (one caption a line).
ImageFolder: DIR/<class>/<image files>, classes in sorted folder order (torchvision's rule);
    ImageNet synset folders (n01440764, ...) get the OpenAI ImageNet class names.

`open_eval_dataset(DIR, image_size)` returns either kind; iterate it for (image tensor, label)
or (image tensor, [captions]); `batches(n)` groups them for the model.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from typing import Iterator

import torch
from PIL import Image

from .imagenet_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES_7, \
    OPENAI_IMAGENET_TEMPLATES_80
from .loader import IMAGE_EXTS
from .shards import iter_tar_samples
from .transforms import eval_transform

IMAGE_FILE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".jfif")


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def is_clip_benchmark_dir(path: str) -> bool:
    """True for the CLIP_benchmark webdataset layout (DIR/test/nshards.txt)."""
    return os.path.isfile(os.path.join(path, "test", "nshards.txt"))


def dataset_type(path: str) -> str:
    """'retrieval' or 'classification' for a dataset directory."""
    f = os.path.join(path, "dataset_type.txt")
    if os.path.isfile(f) and _read_lines(f)[:1] == ["retrieval"]:
        return "retrieval"
    return "classification"


def resolve_templates(spec: str | None) -> list[str]:
    """'openai7' / 'openai80' / a file of templates (one a line, {c} for the class)."""
    if spec in (None, "openai7"):
        return list(OPENAI_IMAGENET_TEMPLATES_7)
    if spec == "openai80":
        return list(OPENAI_IMAGENET_TEMPLATES_80)
    return _read_lines(spec)


def read_templates(path: str) -> list[str]:
    """Zero-shot templates of a dataset dir (its templates file, else OpenAI's 7)."""
    f = os.path.join(path, "zeroshot_classification_templates.txt")
    return _read_lines(f) if os.path.isfile(f) else list(OPENAI_IMAGENET_TEMPLATES_7)


def _imagefolder_classes(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                  and not d.startswith("."))


def read_classnames(path: str) -> list[str]:
    """Class names: classnames.txt, else ImageFolder folders (ImageNet synsets -> names)."""
    f = os.path.join(path, "classnames.txt")
    if os.path.isfile(f):
        return _read_lines(f)
    folders = _imagefolder_classes(path)
    if len(folders) == len(IMAGENET_CLASSNAMES) and all(d.startswith("n") and d[1:].isdigit()
                                                         for d in folders):
        return list(IMAGENET_CLASSNAMES)  # sorted synsets = the standard class order
    return [d.replace("_", " ") for d in folders]


def dataset_name(path: str) -> str:
    """The name results are filed under (eval/NAME.json): the folder's name without CLIP_benchmark's
    `wds_` prefix, so its exports (wds_imagenet1k, wds_flickr30k, wds_mscoco_captions) give the
    names the report's Table 8 reads (imagenet1k, flickr30k, mscoco_captions)."""
    name = os.path.basename(os.path.normpath(path))
    return name[len("wds_"):] if name.startswith("wds_") and len(name) > len("wds_") else name


class EvalDataset:
    """One evaluation set: `.kind`, `.classnames`, `.templates`; iterate for samples."""

    def __init__(self, path: str, image_size: int):
        if not os.path.isdir(path):
            raise ValueError(f"evaluation dataset {path!r} is not a directory")
        self.path = path
        self.name = dataset_name(path)
        self.transform = eval_transform(image_size)
        self.webdataset = is_clip_benchmark_dir(path)
        if not self.webdataset and not _imagefolder_classes(path):
            raise ValueError(f"evaluation dataset {path!r} is neither a CLIP_benchmark "
                             f"directory (test/nshards.txt) nor an ImageFolder")
        self.kind = dataset_type(path) if self.webdataset else "classification"
        self.classnames = read_classnames(path) if self.kind == "classification" else []
        self.templates = read_templates(path)
        self.skipped: Counter = Counter()

    def _raw(self) -> Iterator[tuple[Image.Image, object]]:
        if self.webdataset:
            test = os.path.join(self.path, "test")
            n = int(_read_lines(os.path.join(test, "nshards.txt"))[0])
            for k in range(n):
                for s in iter_tar_samples(os.path.join(test, f"{k}.tar"), self.skipped,
                                          retries=0):
                    ext = next((e for e in IMAGE_EXTS if e in s), None)
                    target = s.get("txt" if self.kind == "retrieval" else "cls")
                    if ext is None or target is None:
                        self.skipped["incomplete_sample"] += 1
                        continue
                    text = target.decode("utf-8").strip()
                    label = ([c for c in text.split("\n") if c.strip()]
                             if self.kind == "retrieval" else int(text))
                    yield s[ext], label
        else:
            for label, cls in enumerate(_imagefolder_classes(self.path)):
                folder = os.path.join(self.path, cls)
                for name in sorted(os.listdir(folder)):
                    if name.lower().endswith(IMAGE_FILE_EXTS):
                        with open(os.path.join(folder, name), "rb") as f:
                            yield f.read(), label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, object]]:
        """(image [3,H,W], int label) or (image, list of captions); bad images skipped."""
        for data, target in self._raw():
            try:
                img = Image.open(io.BytesIO(data)).convert("RGB")
            except Exception:  # noqa: BLE001 - any decode failure: count and skip
                self.skipped["bad_image"] += 1
                continue
            yield self.transform(img), target

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, object]]:
        """Batches: (images [B,3,H,W], labels LongTensor [B]) or (images, list of caption lists)."""
        images, targets = [], []
        for img, t in self:
            images.append(img)
            targets.append(t)
            if len(images) == batch_size:
                yield self._collate(images, targets)
                images, targets = [], []
        if images:
            yield self._collate(images, targets)

    def _collate(self, images, targets):
        if self.kind == "classification":
            return torch.stack(images), torch.tensor(targets, dtype=torch.long)
        return torch.stack(images), targets


def missing_shards(path: str) -> list[str]:
    """Test shards that test/nshards.txt of a CLIP_benchmark set names but that do not exist
    (an evaluation over part of a set is not that set's result); [] for an ImageFolder."""
    if not is_clip_benchmark_dir(path):
        return []
    test = os.path.join(path, "test")
    try:
        n = int(_read_lines(os.path.join(test, "nshards.txt"))[0])
    except (IndexError, ValueError):
        return [os.path.join(test, "nshards.txt")]  # unreadable count: the shard list itself is missing
    return [p for p in (os.path.join(test, f"{k}.tar") for k in range(n)) if not os.path.isfile(p)]


def open_eval_dataset(path: str, image_size: int) -> EvalDataset:
    """Open a CLIP_benchmark or ImageFolder evaluation set; ValueError if it is neither."""
    return EvalDataset(path, image_size)


def write_clip_benchmark_from_imagefolder(src: str, dst: str, templates: str | None = "openai7",
                                          samples_per_shard: int = 1000) -> int:
    """Write an ImageFolder as a CLIP_benchmark classification set; return the sample count.

    Image bytes are stored as they are (no re-encoding), with their original extension.
    """
    classes = _imagefolder_classes(src)
    if not classes:
        raise ValueError(f"{src!r} has no class folders")
    items = []
    for label, cls in enumerate(classes):
        folder = os.path.join(src, cls)
        for name in sorted(os.listdir(folder)):
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_FILE_EXTS:
                items.append((os.path.join(folder, name), ext.lstrip(".").replace("jpeg", "jpg"),
                              label))
    test = os.path.join(dst, "test")
    os.makedirs(test, exist_ok=True)
    nshards = max(1, -(-len(items) // samples_per_shard))
    for k in range(nshards):
        with tarfile.open(os.path.join(test, f"{k}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(k * samples_per_shard, min(len(items), (k + 1) * samples_per_shard)):
                path, ext, label = items[i]
                for suffix, data in ((ext, open(path, "rb").read()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"s{i:08d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    with open(os.path.join(test, "nshards.txt"), "w") as f:
        f.write(f"{nshards}\n")
    with open(os.path.join(dst, "classnames.txt"), "w") as f:
        f.write("\n".join(read_classnames(src)) + "\n")
    with open(os.path.join(dst, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("\n".join(resolve_templates(templates)) + "\n")
    return len(items)
