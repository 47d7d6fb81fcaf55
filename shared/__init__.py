"""What every stage needs: dataset manifests, the feature-store reader, digests,
atomic writes, errors, and the `vl` command root.

`FeatureStore` is imported on first use (it needs h5py), so `vl --help` stays instant.
"""
from vl.shared.digests import digest_json, digest_strings, sha256_file
from vl.shared.errors import VLError
from vl.shared.manifest import DatasetManifest, ManifestMeta, SourceFile, write_manifest
from vl.shared.version import __version__

__all__ = [
    "DatasetManifest",
    "FeatureStore",
    "ManifestMeta",
    "SourceFile",
    "VLError",
    "__version__",
    "digest_json",
    "digest_strings",
    "sha256_file",
    "write_manifest",
]


def __getattr__(name: str):
    if name == "FeatureStore":
        from vl.shared.feature_store import FeatureStore

        return FeatureStore
    raise AttributeError(f"module 'vl.shared' has no attribute {name!r}")
