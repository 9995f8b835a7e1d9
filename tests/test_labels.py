"""Label files, read one way by pre-training, probes and the synthetic catalog."""
import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from musicrep.errors import ConfigError
from musicrep.labels import read_labels, split_tags


def test_csv_gzip_and_parquet_read_alike_and_ids_stay_strings(tmp_path):
    text = "track_id,split,key,tags,valence\n001,train,C major,rock|calm,0.5\n002,test,a:min,,1\n"
    (tmp_path / "l.csv.gz").write_bytes(gzip.compress(text.encode()))
    table = read_labels(str(tmp_path / "l.csv.gz"), required=("track_id", "split"))
    assert table.column("track_id").to_pylist() == ["001", "002"]
    assert table.column("valence").to_pylist() == [0.5, 1.0]
    assert [split_tags(value) for value in table.column("tags").to_pylist()] == [["rock", "calm"], []]
    pq.write_table(table.set_column(3, "tags", pa.array([["rock", " calm "], None])), tmp_path / "l.parquet")
    again = read_labels(str(tmp_path / "l.par*"))
    assert [split_tags(value) for value in again.column("tags").to_pylist()] == [["rock", "calm"], []]


def test_errors_name_what_is_wrong(tmp_path):
    (tmp_path / "l.csv").write_text("track,split\na,train\n")
    with pytest.raises(ConfigError, match=r"lack column\(s\) \['track_id'\]; columns: \['track', 'split'\]"):
        read_labels(str(tmp_path / "l.csv"))
    with pytest.raises(ConfigError, match="must name one file; it matches 0"):
        read_labels(str(tmp_path / "none.csv"))
    (tmp_path / "l.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"labels must be a \.csv/\.csv\.gz/\.parquet/\.pq file"):
        read_labels(str(tmp_path / "l.txt"))
