"""What each open image-text set's metadata looks like, so `prep download --preset NAME` reads it.

LAION withdrew the LAION-400M and LAION-5B metadata in December 2023 and released Re-LAION-5B
in August 2024; DataComp-1B / CommonPool is the other open set at this scale. Their parquets
name the same things differently (URL/TEXT, url/caption, url/text), carry different quality
columns, and DataComp's own downloader blurs faces from `face_bboxes`. A preset is that
knowledge in one place; every field can still be overridden by an explicit flag.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """Column names and download treatment of one dataset's metadata parquets."""

    name: str
    url_col: str                      # image URL
    caption_col: str                  # alt text
    nsfw_col: str | None              # tag column for --drop-nsfw/--drop-unsure (None: the set has none)
    punsafe_col: str | None           # probability column for --max-punsafe (None: the set has none)
    similarity_col: str | None        # CLIP image-text similarity for --min-similarity
    extra_columns: tuple[str, ...]    # saved in each sample's .json when the parquet has them
    bbox_col: str | None = None       # boxes img2dataset blurs (DataComp: faces), None: no blurring
    about: str = ""                   # one line printed with the settings


PRESETS: dict[str, Preset] = {
    # The original LAION-400M release (withdrawn; for those who hold a copy): 32 parquets.
    "laion400m": Preset(
        "laion400m", url_col="URL", caption_col="TEXT", nsfw_col="NSFW", punsafe_col=None,
        similarity_col="similarity", extra_columns=("SAMPLE_ID", "NSFW", "similarity", "LICENSE"),
        about="original LAION-400M metadata (withdrawn Dec 2023; no re-release)"),
    # Re-LAION-5B (Aug 2024), e.g. relaion2B-en-research-safe: lowercase url/caption; the
    # quality columns exist in some parts and not others, hence "where present".
    "relaion2b": Preset(
        "relaion2b", url_col="url", caption_col="caption", nsfw_col=None, punsafe_col="punsafe",
        similarity_col="similarity", extra_columns=("similarity", "punsafe", "pwatermark"),
        about="Re-LAION-2B-en (research / research-safe), stands in for LAION-2B"),
    # DataComp-1B / CommonPool (xlarge/0/*.parquet ...): no NSFW column; its downloader keeps uid
    # and blurs faces (download_upstream.py: bbox_col="face_bboxes", save_additional_columns=["uid"]).
    # Similarity defaults to the B/32 score, as DataComp's baseline filters use it.
    "datacomp": Preset(
        "datacomp", url_col="url", caption_col="text", nsfw_col=None, punsafe_col=None,
        similarity_col="clip_b32_similarity_score", extra_columns=("uid",), bbox_col="face_bboxes",
        about="DataComp-1B / CommonPool; faces blurred from face_bboxes as DataComp's downloader does"),
}

# Without a preset: the column names this project always used (LAION-400M's, plus LAION-2B's
# joined punsafe/pwatermark).
LEGACY = Preset("none", url_col="URL", caption_col="TEXT", nsfw_col="NSFW", punsafe_col="punsafe",
                similarity_col="similarity",
                extra_columns=("NSFW", "similarity", "LICENSE", "punsafe", "pwatermark"))


def get_preset(name: str | None) -> Preset:
    """The preset called `name`; None gives the legacy LAION-400M column names."""
    if name is None:
        return LEGACY
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"--preset {name!r}: unknown (choose from {', '.join(PRESETS)})") from None
