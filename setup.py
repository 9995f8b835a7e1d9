"""Distribution `musicrep`: one installable package so Beam can ship it with --setup_file.

The top-level folders are the subpackages (features/, model/, pipelines/, probes/);
core/ holds the root package (CLI, errors, file layer; musicrep.testing: the synthetic catalog).
"""
import setuptools

SUBPACKAGES = ("contracts", "features", "model", "pipelines", "probes", "store")

# Versions verified to install and run together on Python 3.11 (see docs/index.md, "Versions").
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "numpy>=1.26,<3",
    "scipy>=1.11",
    "threadpoolctl>=3.1",
    "pyarrow>=17",
    "pandas>=2.2",
    "av>=14",
    "soxr>=0.5",
    "librosa>=0.11",
    "google-cloud-storage>=2.18",
    "google-crc32c>=1.5",  # TFRecord checksums of the shard reader (musicrep.contracts.shards)
    "isal>=1.6",  # ISA-L's gzip for the shards (musicrep.contracts.shards)
    "pyyaml>=6",
    "deltalake>=1.6,<2",
    "openvino>=2026.4,<2027",
    "matplotlib>=3.8",  # the probe reports' figures (report.html)
]

EXTRAS_REQUIRE = {
    "test": [
        "pytest>=8",
        "scikit-learn>=1.5",
        "mir_eval>=0.8",
        "duckdb>=1.1",
        "polars>=1.0",
        "gcp-storage-emulator>=2024.8.3",
        "dockerfile-parse>=2.0",
    ],
}

setuptools.setup(
    name="musicrep",
    version="0.1.0",
    description="Catalog-scale music audio embeddings (SF-NFNet-F0, MULE) on Apache Beam.",
    python_requires=">=3.10",
    packages=["musicrep"] + [f"musicrep.{name}" for name in SUBPACKAGES],
    package_dir={"musicrep": "core", **{f"musicrep.{name}": name for name in SUBPACKAGES}},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["musicrep=musicrep.cli:console"]},
)
