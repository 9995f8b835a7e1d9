"""The store reader snippets of docs/outputs.md ("Reading the store": deltalake/pandas, Polars,
DuckDB, nearest neighbours) run against a real store."""
from __future__ import annotations

import pathlib
import re

import numpy as np

from store_support import write_objects
from musicrep.pipelines.synthetic import synthetic_embedding, write_synthetic_export

READERS_PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "outputs.md"


def reader_snippets() -> list[str]:
    text = READERS_PAGE.read_text()
    section = text[text.index("<!-- store-readers:begin -->") : text.index("<!-- store-readers:end -->")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_docs_reader_snippets_read_the_store(tmp_path, run_store):
    model = str(tmp_path / "model-1728")
    write_synthetic_export(model, model_id="synthetic-1728", embedding_size=1728)
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    write_objects(catalog, [f"t{i:02d}" for i in range(12)])
    run_store(catalog, store, model=model)
    write_objects(catalog, ["t12"])
    run_store(catalog, store, model=model)

    snippets = reader_snippets()
    assert len(snippets) == 4
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet.replace("gs://BUCKET/store", store), str(READERS_PAGE), "exec"), namespace)  # noqa: S102

    frame, X = namespace["frame"], namespace["X"]
    assert X.shape == (13, 1728) and X.dtype == np.float32
    by_id = namespace["store"].to_pandas().set_index("track_id")
    for track_id, embedding in zip(frame["track_id"], X):
        np.testing.assert_array_equal(embedding, synthetic_embedding(by_id.loc[track_id, "content_sha256"], 1728))
    assert namespace["previous"].num_rows == 12  # version 1: before t12 was added
    assert namespace["per_model"].rows() == [("synthetic-1728", 13)]
    assert namespace["counts"] == [("synthetic-1728", 13)]

    # Tracks most like this one, against numpy: cosine over every other track, top 10.
    most_like, this_track = namespace["most_like"], namespace["this_track"]
    ids = list(frame["track_id"])
    query = X[ids.index(this_track)].astype(np.float64)
    others = [i for i, track_id in enumerate(ids) if track_id != this_track]
    cosine = X[others] @ query / (np.linalg.norm(X[others], axis=1) * np.linalg.norm(query))
    best = np.argsort(-cosine, kind="stable")[:10]
    assert len(most_like) == 10 and this_track not in [track_id for track_id, _ in most_like]
    assert [track_id for track_id, _ in most_like] == [ids[others[i]] for i in best]
    np.testing.assert_allclose([s for _, s in most_like], cosine[best], rtol=0, atol=1e-5)
