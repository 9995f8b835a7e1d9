"""Reading embeddings and labels, and joining them on track_id."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicrep.errors import ConfigError
from musicrep.probes.data import (MissingTracksError, join_tracks, read_embeddings,
                                  read_labels)


def test_embeddings_round_trip(tmp_path, rng, embedding_writer):
    write_embeddings, _ = embedding_writer
    ids = [f"t{i}" for i in range(10)]
    vectors = rng.standard_normal((10, 6)).astype(np.float32)
    pattern = write_embeddings(tmp_path, ids, vectors, shards=3, model_id="m1")
    embeddings = read_embeddings(pattern)
    assert embeddings.files == 3
    assert embeddings.model_id == "m1"
    order = np.argsort(embeddings.track_ids)
    np.testing.assert_array_equal(embeddings.track_ids[order], ids)
    np.testing.assert_array_equal(embeddings.vectors[order], vectors)


def test_embeddings_refuse_mixed_models_and_missing_files(tmp_path, rng, embedding_writer):
    write_embeddings, _ = embedding_writer
    vectors = rng.standard_normal((4, 6)).astype(np.float32)
    write_embeddings(tmp_path / "a", ["a", "b"], vectors[:2], shards=1, model_id="m1")
    (tmp_path / "a" / "embeddings-00000-of-00001.parquet").rename(tmp_path / "x-0.parquet")
    write_embeddings(tmp_path / "a", ["c", "d"], vectors[2:], shards=1, model_id="m2")
    (tmp_path / "a" / "embeddings-00000-of-00001.parquet").rename(tmp_path / "x-1.parquet")
    with pytest.raises(ConfigError, match=r"holds embeddings of 2 models \('m1', 'm2'\)"):
        read_embeddings(str(tmp_path / "x-*.parquet"))
    with pytest.raises(ConfigError, match="no file matches"):
        read_embeddings(str(tmp_path / "nothing-*.parquet"))


def _labels(ids, splits, labels):
    return pa.table({"track_id": ids, "split": splits, "label": labels})


def _embeddings(tmp_path, rng, writer, ids):
    pattern = writer[0](tmp_path / "emb", ids, rng.standard_normal((len(ids), 4)), shards=1)
    return read_embeddings(pattern)


def test_missing_tracks_are_an_error_naming_count_and_ids(tmp_path, rng, embedding_writer):
    embeddings = _embeddings(tmp_path, rng, embedding_writer, ["a", "b", "c", "extra"])
    labels = _labels(["a", "b", "c", "gone1", "gone2"], ["train", "valid", "test"] * 1 + ["train"] * 2,
                     ["x", "y", "x", "y", "x"])
    with pytest.raises(MissingTracksError,
                       match=r"2 labelled track\(s\) have no embedding \('gone1', 'gone2'\); "
                             r"1 embedded track\(s\) have no label \('extra'\)"):
        join_tracks(embeddings, labels, task="multiclass", label_columns=("label",))
    data = join_tracks(embeddings, labels, task="multiclass", label_columns=("label",),
                       allow_missing=True)
    assert data.missing.as_dict()["labelled_without_embedding"] == {
        "count": 2, "examples": ["gone1", "gone2"]}
    assert data.missing.as_dict()["embedded_without_label"]["count"] == 1
    assert {split: len(ids) for split, ids in data.track_ids.items()} == {
        "train": 1, "valid": 1, "test": 1}


def test_join_keeps_rows_aligned(tmp_path, rng, embedding_writer):
    ids = ["a", "b", "c", "d"]
    embeddings = _embeddings(tmp_path, rng, embedding_writer, ids)
    labels = _labels(ids[::-1], ["train", "validation", "test", "train"], ["p", "q", "p", "q"])
    data = join_tracks(embeddings, labels, task="multiclass", label_columns=("label",))
    row = {track_id: i for i, track_id in enumerate(embeddings.track_ids)}
    for split in ("train", "valid", "test"):
        expected = embeddings.vectors[[row[t] for t in data.track_ids[split]]]
        np.testing.assert_array_equal(data.x[split], expected)
    assert data.track_ids["valid"].tolist() == ["c"]
    assert data.target_names == ("p", "q")
    assert data.y["train"].tolist() == [0, 1]  # d -> p, a -> q


def test_labels_file_formats_and_targets(tmp_path, rng, embedding_writer):
    ids = ["1", "2", "3", "4"]
    embeddings = _embeddings(tmp_path, rng, embedding_writer, ids)
    (tmp_path / "labels.csv").write_text(
        "track_id,split,tags,key,valence\n1,train,rock|calm,C major,0.5\n"
        "2,valid,rock,a:min,0.1\n3,test,,Bb:maj,0.9\n4,train,jazz,f#:min,0.3\n")
    labels = read_labels(str(tmp_path / "labels.csv"))
    tags = join_tracks(embeddings, labels, task="multilabel", label_columns=("tags",))
    assert tags.target_names == ("calm", "jazz", "rock")
    assert tags.y["train"].tolist() == [[1, 0, 1], [0, 1, 0]]
    assert tags.y["test"].tolist() == [[0, 0, 0]]
    keys = join_tracks(embeddings, labels, task="key", label_columns=("key",))
    assert keys.y["train"].tolist() == [0, 18] and keys.y["test"].tolist() == [10]
    values = join_tracks(embeddings, labels, task="regression", label_columns=("valence",))
    assert values.y["valid"].tolist() == [[pytest.approx(0.1)]]
    # Parquet labels with list tags read the same.
    table = labels.set_column(labels.column_names.index("tags"), "tags",
                              pa.array([["rock", "calm"], ["rock"], [], ["jazz"]]))
    pq.write_table(table, tmp_path / "labels.parquet")
    again = join_tracks(embeddings, read_labels(str(tmp_path / "labels.parquet")),
                        task="multilabel", label_columns=("tags",))
    np.testing.assert_array_equal(again.y["train"], tags.y["train"])


def test_label_errors_echo_the_problem(tmp_path, rng, embedding_writer):
    ids = ["a", "b", "c"]
    embeddings = _embeddings(tmp_path, rng, embedding_writer, ids)
    with pytest.raises(ConfigError, match=r"unknown split value\(s\) \['dev'\]"):
        join_tracks(embeddings, _labels(ids, ["train", "dev", "test"], ["x"] * 3),
                    task="multiclass", label_columns=("label",))
    with pytest.raises(ConfigError, match=r"labels lack column 'genre'"):
        join_tracks(embeddings, _labels(ids, ["train", "valid", "test"], ["x"] * 3),
                    task="multiclass", label_columns=("genre",))
    with pytest.raises(ConfigError, match=r"column 'label' is empty for 1 track\(s\): 'b'"):
        join_tracks(embeddings, _labels(ids, ["train", "valid", "test"], ["x", None, "y"]),
                    task="multiclass", label_columns=("label",))
    with pytest.raises(ConfigError, match=r"1 track_id\(s\) appear more than once: 'a'"):
        join_tracks(embeddings, _labels(["a", "a", "b"], ["train", "valid", "test"], ["x"] * 3),
                    task="multiclass", label_columns=("label",))
    with pytest.raises(ConfigError, match=r"no labelled track with an embedding in split\(s\) \['test'\]"):
        join_tracks(embeddings, _labels(ids, ["train", "valid", "valid"], ["x"] * 3),
                    task="multiclass", label_columns=("label",))


def test_foreign_parquet_with_a_plain_list_column_is_read_with_unknown_provenance(tmp_path, rng):
    # What another model's pipeline might write: pandas, float64 lists, no musicrep metadata.
    vectors = rng.standard_normal((5, 3))
    frame = pd.DataFrame({"track_id": [f"t{i}" for i in range(5)], "embedding": list(vectors),
                              "note": ["x"] * 5})
    frame.to_parquet(tmp_path / "other.parquet")
    assert pa.types.is_list(pq.read_schema(tmp_path / "other.parquet").field("embedding").type)
    embeddings = read_embeddings(str(tmp_path / "other.parquet"))
    assert (embeddings.model_id, embeddings.feature_config_sha256) == ("unknown", "unknown")
    np.testing.assert_array_equal(embeddings.track_ids, [f"t{i}" for i in range(5)])
    np.testing.assert_allclose(embeddings.vectors, vectors.astype(np.float32))
    assert embeddings.vectors.dtype == np.float32


def test_embeddings_of_different_lengths_or_no_list_are_refused(tmp_path):
    pq.write_table(pa.table({"track_id": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]}), tmp_path / "ragged.parquet")
    with pytest.raises(ConfigError, match=r"embeddings of different lengths \[1, 2\]"):
        read_embeddings(str(tmp_path / "ragged.parquet"))
    pq.write_table(pa.table({"track_id": ["a"], "embedding": ["1,2"]}), tmp_path / "text.parquet")
    with pytest.raises(ConfigError, match="must be a list of numbers; got string"):
        read_embeddings(str(tmp_path / "text.parquet"))
    pq.write_table(pa.table({"track_id": ["a"], "vector": [[1.0]]}), tmp_path / "named.parquet")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['embedding'\]"):
        read_embeddings(str(tmp_path / "named.parquet"))


def test_a_musicrep_parquet_of_another_schema_version_names_both_versions(tmp_path):
    table = pa.table({"track_id": ["a"], "embedding": [[1.0, 2.0]]})
    pq.write_table(table.replace_schema_metadata({"musicrep_schema": "musicrep-embeddings-0"}),
                   tmp_path / "old.parquet")
    with pytest.raises(ConfigError, match=r"version 'musicrep-embeddings-0', but this musicrep reads "
                                          r"'musicrep-embeddings-\d+'"):
        read_embeddings(str(tmp_path / "old.parquet"))
