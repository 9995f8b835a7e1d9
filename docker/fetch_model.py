"""Copy a model export (a directory tree at any URI Beam's FileSystems reads) to a local dir.

Used at image build time (`docker build --build-arg MODEL_URI=...`); the same code path the
jobs use for gs:// model URIs, so it needs no gsutil/gcloud in the image.

usage: python fetch_model.py MODEL_URI LOCAL_DIR
"""
import os
import sys

from apache_beam.io.filesystems import FileSystems


def copy_tree(source_uri: str, local_dir: str) -> int:
    source = source_uri.rstrip("/") + "/"
    (match,) = FileSystems.match([source + "**"])
    if not match.metadata_list:
        raise SystemExit(f"fetch_model: no files under {source_uri!r}")
    for metadata in match.metadata_list:
        relative = metadata.path[len(source):]
        target = os.path.join(local_dir, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with FileSystems.open(metadata.path, compression_type="uncompressed") as src, \
                open(target, "wb") as dst:
            while chunk := src.read(16 << 20):
                dst.write(chunk)
    return len(match.metadata_list)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    count = copy_tree(sys.argv[1], sys.argv[2])
    print(f"fetch_model: {count} files from {sys.argv[1]} -> {sys.argv[2]}")
