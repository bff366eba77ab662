"""Built-in synthetic captioned images: coloured shapes a tiny CLIP can actually learn.

Every sample is a pure function of (seed, index): the numpy generator is keyed by the pair,
so sample i is identical whichever process, worker or rank renders it. That is what lets
the synthetic loader give the same global batch for any world size, and lets tests compare
runs bit for bit.

Captions name four attributes (size, colour, shape, position); each is visible in the image,
so image-text matching is learnable, and zero-shot classification over colour+shape classes
is a real test of what was learned.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# Colours chosen to stay distinguishable after JPEG compression at 32-64 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 170),
    "orange": (250, 130, 0),
    "black": (20, 20, 20),
    "cyan": (0, 200, 210),
}
SHAPES: list[str] = ["circle", "square", "triangle", "diamond", "cross", "star"]
SIZES: dict[str, float] = {"small": 0.12, "large": 0.22}  # radius as a fraction of the side
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
# A few phrasings so the text tower sees some variety; all carry the same four attributes.
CAPTION_TEMPLATES: list[str] = [
    "a {size} {color} {shape} {where}",
    "a photo of a {size} {color} {shape} {where}",
    "{where_cap}, a {size} {color} {shape}",
]

#: zero-shot classes: colour + shape (48 classes)
CLASSNAMES: list[str] = [f"{c} {s}" for c in COLORS for s in SHAPES]
#: prompt templates for zero-shot evaluation on the synthetic classes
TEMPLATES: list[str] = ["a photo of a {c}.", "a {c}.", "a picture of a {c}.", "a drawing of a {c}."]

# Evaluation sets draw from a separate generator stream (third key element), so they never
# coincide with training samples even when the same seed is used.
_TRAIN_STREAM = 0
_ZEROSHOT_STREAM = 1
_RETRIEVAL_STREAM = 2
DEFAULT_EVAL_SEED = 12345


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally flipped image: left and right swap."""
    words = caption.split(" ")
    swap = {"left": "right", "right": "left", "left,": "right,", "right,": "left,"}
    return " ".join(swap.get(w, w) for w in words)


def _where(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def caption_words() -> list[str]:
    """All lower-case words the synthetic captions and templates can contain (for the builtin vocab)."""
    words: set[str] = set()
    texts = list(COLORS) + SHAPES + list(SIZES) + list(POSITIONS) + CAPTION_TEMPLATES + TEMPLATES
    texts += ["in the center", "at the", "photo picture drawing of a"]
    for t in texts:
        for w in t.replace("{", " ").replace("}", " ").replace(",", " ").replace(".", " ").split():
            words.add(w.lower())
    return sorted(words)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * 0.8, y * 0.8) for x, y in pts]
    elif shape == "triangle":
        pts = [(0, -1), (0.95, 0.75), (-0.95, 0.75)]
    elif shape == "diamond":
        pts = [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
    elif shape == "cross":
        a, b = 0.33, 1.0
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a),
               (-b, a), (-b, -a), (-a, -a)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.0 if k % 2 == 0 else 0.45
            t = -np.pi / 2 + k * np.pi / 5
            pts.append((rad * np.cos(t), rad * np.sin(t)))
    else:
        raise ValueError(f"unknown polygon shape {shape!r}")
    # A small rotation keeps shapes recognisable while adding nuisance variation.
    ca, sa = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _draw(rng: np.random.Generator, image_size: int, color: str, shape: str, size: str,
          position: str) -> Image.Image:
    # Render at 2x then downsample: cheap anti-aliasing so small images still show the shape.
    s = image_size * 2
    base = rng.integers(190, 240)
    bg = np.full((s, s, 3), base, dtype=np.int16)
    bg += rng.integers(-8, 9, size=(1, 1, 3), dtype=np.int16)  # slight background tint
    bg += rng.normal(0, 6, size=(s, s, 1)).astype(np.int16)    # light pixel noise
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    px, py = POSITIONS[position]
    jitter = 0.06
    cx = (px + rng.uniform(-jitter, jitter)) * s
    cy = (py + rng.uniform(-jitter, jitter)) * s
    r = SIZES[size] * s * rng.uniform(0.85, 1.1)
    fill = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in COLORS[color])
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rng.uniform(-0.25, 0.25)), fill=fill)
    return img.resize((image_size, image_size), Image.BILINEAR)


def _attributes(rng: np.random.Generator) -> tuple[str, str, str, str]:
    color = list(COLORS)[rng.integers(len(COLORS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    position = list(POSITIONS)[rng.integers(len(POSITIONS))]
    return color, shape, size, position


def _caption(rng: np.random.Generator, color: str, shape: str, size: str, position: str) -> str:
    t = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    where = _where(position)
    return t.format(size=size, color=color, shape=shape, where=where, where_cap=where)


def render_sample(seed: int, index: int, image_size: int) -> tuple[Image.Image, str]:
    """Render training sample `index` of the synthetic stream `seed`: (RGB image, caption).

    Deterministic in (seed, index) only, e.g. "a large red circle at the top left".
    """
    rng = np.random.default_rng([seed, index, _TRAIN_STREAM])
    attrs = _attributes(rng)
    caption = _caption(rng, *attrs)
    return _draw(rng, image_size, *attrs), caption


def render_labeled(seed: int, index: int, image_size: int, stream: int = _ZEROSHOT_STREAM
                   ) -> tuple[Image.Image, int, str]:
    """Render a held-out sample: (image, colour+shape class index into CLASSNAMES, caption)."""
    rng = np.random.default_rng([seed, index, stream])
    color, shape, size, position = _attributes(rng)
    caption = _caption(rng, color, shape, size, position)
    img = _draw(rng, image_size, color, shape, size, position)
    return img, CLASSNAMES.index(f"{color} {shape}"), caption


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed mtime: identical inputs give byte-identical shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_synthetic_shards(out_dir: str, num_samples: int, samples_per_shard: int, seed: int = 0,
                           image_size: int = 64, start_index: int = 0) -> list[str]:
    """Write webdataset shards laid out as img2dataset writes them; return the tar paths.

    Shard k is `out_dir/{k:05d}.tar` holding KEY.jpg, KEY.txt, KEY.json per sample, with
    KEY = the global sample index as 9 digits (so loaders can recover the index from the key),
    plus `{k:05d}_stats.json` like img2dataset's.
    """
    if samples_per_shard <= 0:
        raise ValueError("samples_per_shard must be positive")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for shard, lo in enumerate(range(0, num_samples, samples_per_shard)):
        hi = min(lo + samples_per_shard, num_samples)
        path = os.path.join(out_dir, f"{shard:05d}.tar")
        with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start_index + lo, start_index + hi):
                img, caption = render_sample(seed, i, image_size)
                key = f"{i:09d}"
                meta = {"key": key, "caption": caption, "status": "success", "url": None,
                        "width": image_size, "height": image_size,
                        "original_width": image_size, "original_height": image_size,
                        "error_message": None}
                _add(tar, f"{key}.jpg", _jpeg(img))
                _add(tar, f"{key}.txt", caption.encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
        os.replace(path + ".tmp", path)  # atomic: a reader never sees a half-written shard
        with open(os.path.join(out_dir, f"{shard:05d}_stats.json"), "w") as f:
            json.dump({"count": hi - lo, "successes": hi - lo, "failed_to_download": 0,
                       "failed_to_resize": 0}, f)
        paths.append(path)
    return paths


def write_synthetic_images(image_dir: str, num_samples: int, seed: int = 0,
                           image_size: int = 64) -> list[tuple[str, str]]:
    """Write samples 0..num_samples-1 as JPEG files; return [(file name, caption)]."""
    os.makedirs(image_dir, exist_ok=True)
    out = []
    for i in range(num_samples):
        img, caption = render_sample(seed, i, image_size)
        name = f"{i:06d}.jpg"
        img.save(os.path.join(image_dir, name), format="JPEG", quality=92)
        out.append((name, caption))
    return out


def write_synthetic_parquet(path: str, image_dir: str, num_samples: int, seed: int = 0,
                            base_url: str | None = None, image_size: int = 64,
                            extra_rows: Sequence[dict] = ()) -> int:
    """Write a LAION-400M-schema metadata parquet for synthetic images; return its row count.

    Images are rendered into `image_dir`; URL points at them as `base_url/NAME` when a base
    URL (e.g. a local HTTP server) is given, else as file:// paths. `extra_rows` lets tests
    add rows (dead links, non-image bodies) with the same columns.
    """
    import pandas as pd  # optional dependency: only the download path needs it

    rows = []
    for k, (name, caption) in enumerate(write_synthetic_images(image_dir, num_samples, seed,
                                                               image_size)):
        url = (base_url.rstrip("/") + "/" + name) if base_url else \
            "file://" + os.path.abspath(os.path.join(image_dir, name))
        rows.append({"SAMPLE_ID": k, "URL": url, "TEXT": caption, "LICENSE": "?",
                     "NSFW": "UNLIKELY", "similarity": 0.33, "WIDTH": image_size,
                     "HEIGHT": image_size})
    for k, extra in enumerate(extra_rows):
        row = {"SAMPLE_ID": num_samples + k, "URL": "", "TEXT": "", "LICENSE": "?",
               "NSFW": "UNLIKELY", "similarity": 0.33, "WIDTH": image_size, "HEIGHT": image_size}
        row.update(extra)
        rows.append(row)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return len(rows)


def _write_eval_common(out_dir: str, dataset_type: str | None) -> str:
    test_dir = os.path.join(out_dir, "test")
    os.makedirs(test_dir, exist_ok=True)
    with open(os.path.join(out_dir, "classnames.txt"), "w") as f:
        f.write("\n".join(CLASSNAMES) + "\n")
    with open(os.path.join(out_dir, "zeroshot_classification_templates.txt"), "w") as f:
        f.write("\n".join(TEMPLATES) + "\n")
    if dataset_type:
        with open(os.path.join(out_dir, "dataset_type.txt"), "w") as f:
            f.write(dataset_type + "\n")
    return test_dir


def _write_eval_shards(test_dir: str, items, samples_per_shard: int) -> int:
    items = list(items)
    nshards = max(1, -(-len(items) // samples_per_shard))
    for k in range(nshards):
        with tarfile.open(os.path.join(test_dir, f"{k}.tar"), "w",
                          format=tarfile.USTAR_FORMAT) as tar:
            for key, members in items[k * samples_per_shard:(k + 1) * samples_per_shard]:
                for ext, data in members:
                    _add(tar, f"{key}.{ext}", data)
    with open(os.path.join(test_dir, "nshards.txt"), "w") as f:
        f.write(f"{nshards}\n")
    return nshards


def write_synthetic_zeroshot(out_dir: str, num_samples: int, seed: int = DEFAULT_EVAL_SEED,
                             image_size: int = 64, samples_per_shard: int = 1000) -> str:
    """Write a held-out zero-shot classification set (classes: CLASSNAMES) in CLIP_benchmark layout."""
    test_dir = _write_eval_common(out_dir, None)
    items = []
    for i in range(num_samples):
        img, label, _ = render_labeled(seed, i, image_size, _ZEROSHOT_STREAM)
        items.append((f"s{i:07d}", [("jpg", _jpeg(img)),
                                    ("cls", str(label).encode())]))
    _write_eval_shards(test_dir, items, samples_per_shard)
    return out_dir


def write_synthetic_retrieval(out_dir: str, num_samples: int, seed: int = DEFAULT_EVAL_SEED,
                              image_size: int = 64, samples_per_shard: int = 1000,
                              captions_per_image: int = 2) -> str:
    """Write a held-out retrieval set in CLIP_benchmark layout (KEY.txt: one caption a line)."""
    test_dir = _write_eval_common(out_dir, "retrieval")
    items = []
    for i in range(num_samples):
        rng = np.random.default_rng([seed, i, _RETRIEVAL_STREAM])
        color, shape, size, position = _attributes(rng)
        img = _draw(rng, image_size, color, shape, size, position)
        caps = [_caption(rng, color, shape, size, position) for _ in range(captions_per_image)]
        items.append((f"s{i:07d}", [("jpg", _jpeg(img)), ("txt", "\n".join(caps).encode())]))
    _write_eval_shards(test_dir, items, samples_per_shard)
    return out_dir
