import numpy as np
import pandas as pd
import pytest

from recsys import Catalog, Interactions, load_interactions


def frame(**cols):
    base = {"user_id": ["a", "a", "b", "b", "a"], "item_id": ["x", "y", "x", "z", "x"]}
    base.update(cols)
    return pd.DataFrame(base)


def test_duplicates_are_aggregated_into_counts():
    data = Interactions.from_frame(frame())
    assert list(data.user_ids) == ["a", "b"] and list(data.item_ids) == ["x", "y", "z"]
    np.testing.assert_array_equal(data.matrix.toarray(), [[2, 1, 0], [1, 0, 1]])
    assert len(data) == 5  # events keep every row


def test_binary_and_value_weightings():
    f = frame(rating=[5, 3, 1, 2, 4])
    binary = Interactions.from_frame(f, weighting="binary")
    np.testing.assert_array_equal(binary.matrix.toarray(), [[1, 1, 0], [1, 0, 1]])
    value = Interactions.from_frame(f, value_col="rating", weighting="value")
    np.testing.assert_array_equal(value.matrix.toarray(), [[9, 3, 0], [1, 0, 2]])


def test_recency_weighting_halves_per_half_life():
    f = frame(t=["2020-01-11", "2020-01-01", "2020-01-11", "2020-01-06", "2020-01-01"])
    data = Interactions.from_frame(f, time_col="t", weighting="recency", half_life_days=10)
    # a: x at age 0 and age 10 -> 1 + 0.5; y at age 10 -> 0.5; b: x age 0, z age 5
    np.testing.assert_allclose(
        data.matrix.toarray(), [[1.5, 0.5, 0], [1, 0, 2 ** -0.5]], rtol=1e-6
    )


def test_fixed_vocabulary_and_select_share_index_space():
    data = Interactions.from_frame(frame())
    train = data.select(data.events["item"] != 2)
    assert train.n_items == 3 and train.matrix.shape == (2, 3)
    again = Interactions.from_frame(frame(), user_ids=["b", "a", "c"], item_ids=["z", "y", "x"])
    assert again.user_index(["a", "c"]).tolist() == [1, 2]
    with pytest.raises(KeyError, match=r"unknown item id\(s\) \['z'\]"):
        Interactions.from_frame(frame(), item_ids=["x", "y", "w"])


@pytest.mark.parametrize(
    "bad, message",
    [
        (frame(user_id=["a", None, "b", "b", "a"]), "row 1: missing 'user_id'"),
        (frame(item_id=["x", "y", " ", "z", "x"]), "row 2: empty 'item_id'"),
        (frame(w=[1, 2, np.nan, 1, 1]), "row 2: 'w' must be a finite non-negative"),
        (frame(w=[1, 2, 3, -1, 1]), "row 3: 'w' must be a finite non-negative"),
        (frame(t=["2020-01-01", "yesterday-ish", "2020-01-01", "2020-01-01", "2020-01-01"]),
         "row 1: can't read 't'"),
    ],
)
def test_bad_rows_are_named(bad, message):
    value_col = "w" if "w" in bad else None
    time_col = "t" if "t" in bad else None
    with pytest.raises(ValueError, match=message):
        Interactions.from_frame(bad, time_col=time_col, value_col=value_col)


def test_empty_and_missing_columns():
    with pytest.raises(ValueError, match="empty"):
        Interactions.from_frame(frame().iloc[:0])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ts'\]"):
        Interactions.from_frame(frame(), time_col="ts")


def test_unknown_id_lookup_names_ids():
    data = Interactions.from_frame(frame())
    with pytest.raises(KeyError, match="unknown user id.*'zz'"):
        data.user_index(["a", "zz"])
    assert data.user_index(["zz"], missing="ignore").tolist() == [-1]


def test_load_hm_layout_keeps_leading_zeros(tmp_path):
    path = tmp_path / "transactions.csv"
    path.write_text("t_dat,customer_id,article_id,price\n2020-01-01,c1,0108775015,0.1\n"
                    "2020-01-02,c1,0108775015,0.1\n2020-01-03,c2,0200000001,0.2\n")
    data = load_interactions(path)
    assert set(data.item_ids) == {"0108775015", "0200000001"}
    assert data.matrix.sum() == 3 and data.events["time"].notna().all()


def test_load_movielens_u_data(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n")
    data = load_interactions(path, weighting="value")
    np.testing.assert_array_equal(data.matrix.toarray(), [[5, 3], [4, 0]])
    assert data.events["time"].iloc[0] == pd.Timestamp(881250949, unit="s")


def test_load_parquet_and_named_columns(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"who": ["u1", "u2"], "what": ["i1", "i1"], "qty": [2.0, 1.0]}).to_parquet(path)
    data = load_interactions(path, "who", "what", value_col="qty", weighting="value")
    np.testing.assert_array_equal(data.matrix.toarray(), [[2], [1]])


def test_load_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,rating\na,x,1\nb,y,nan\n")
    with pytest.raises(ValueError, match=r"bad\.csv: row 1"):
        load_interactions(path, "user_id", "item_id", value_col="rating")
    with pytest.raises(FileNotFoundError):
        load_interactions(tmp_path / "nope.csv")


def test_hm_transactions_load(hm_dir):
    data = load_interactions(hm_dir / "transactions.csv")
    assert (len(data), data.n_users, data.n_items) == (31662, 1364, 17033)
    assert all(len(i) == 10 and i.startswith("0") for i in data.item_ids[:100])


def test_catalog_confines_paths(tmp_path):
    (tmp_path / "img" / "010").mkdir(parents=True)
    (tmp_path / "img" / "010" / "0101.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    catalog = Catalog.from_directory(tmp_path / "img")
    assert catalog.path("0101") == (tmp_path / "img" / "010" / "0101.jpg").resolve()
    with pytest.raises(ValueError, match="escapes the root"):
        Catalog(tmp_path / "img", {"evil": "../secret.jpg"})
    with pytest.raises(ValueError, match="must be relative"):
        Catalog(tmp_path / "img", {"evil": str(tmp_path / "secret.jpg")})
    (tmp_path / "img" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(ValueError, match="escapes the root"):
        Catalog(tmp_path / "img", {"link": "link.jpg"})
    with pytest.raises(KeyError, match="'nope' is not in the catalog"):
        catalog.path("nope")
