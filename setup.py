from setuptools import find_packages, setup

CORE = ["torch", "timm", "tokenizers", "webdataset", "braceexpand", "tensorboard", "pyyaml", "numpy", "pillow"]
EXTRAS = {
    "deepspeed": ["deepspeed>=0.15"],
    # img2dataset writes the shards; pyarrow/pandas read LAION's parquet metadata.
    "data": ["img2dataset", "pyarrow", "pandas"],
    "report": ["matplotlib"],
    # `prep download --distributor pyspark` (a Spark cluster); the Makefile installs it from a
    # cached wheel, as pip builds it from a ~450 MB sdist.
    "spark": ["pyspark>=3.5"],
}
# open_clip is a reference implementation used by the tests only (loss cross-check, export).
EXTRAS["dev"] = sorted({*EXTRAS["deepspeed"], *EXTRAS["data"], *EXTRAS["report"],
                        "pytest", "pytest-timeout", "open-clip-torch",
                        "scikit-image"})  # scikit-image: photographs for bench_loader.py

setup(
    name="flip-scale",
    version="0.1.0",
    description="Train FLIP (CLIP with image-patch masking) at scale: FSDP2 / DeepSpeed, Slurm, LAION",
    python_requires=">=3.11",
    packages=find_packages(include=["flip_scale", "flip_scale.*"]),
    package_data={"flip_scale": ["assets/*"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["flip-scale=flip_scale.cli:main"]},
)
