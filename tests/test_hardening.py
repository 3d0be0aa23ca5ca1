"""Regressions for issue 15: no data loss, no silent corruption, errors a user can act on.

Each test reproduces one probe that lost data, corrupted a result or raised a
traceback before the fix, and asserts the message and that nothing on disk was lost.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ground import files
from ground.files import atomic_directory, pack_strings, unpack_strings
from recsys.catalog import Catalog
from recsys.cf import Recommender, create_model
from recsys.interactions import MAX_ID_LENGTH, Interactions, load_interactions
from stylerec.cli import main

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.fixture
def log_csv(tmp_path) -> Path:
    rows = ["user_id,item_id"] + [f"u{u},i{(u * 7 + j) % 9}" for u in range(12) for j in range(3)]
    return _write(tmp_path / "log.csv", "\n".join(rows) + "\n")


def _small() -> Interactions:
    frame = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"],
                          "item_id": ["x", "y", "x", "z", "w"]})
    return Interactions.from_frame(frame)


# -- 1. a save replaces only a saved model -------------------------------------------------


@pytest.mark.parametrize("target", ["folder", "file", "cwd"])
def test_fit_out_never_replaces_what_is_not_a_saved_model(tmp_path, log_csv, monkeypatch,
                                                          capsys, target):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    notes = _write(tmp_path / "notes.txt", "my notes")
    out = {"folder": user, "file": notes, "cwd": Path(".")}[target]
    monkeypatch.chdir(user)
    assert main(["fit", "--interactions", str(log_csv), "--model", "popularity",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace" in err and len(err.strip().splitlines()) == 1
    assert (user / "thesis.txt").read_text() == "years of work"
    assert notes.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "mine", "notes.txt"]
    assert sorted(p.name for p in user.iterdir()) == ["thesis.txt"]  # no .mine.old.* either


def test_a_saved_model_or_an_empty_folder_may_be_replaced(tmp_path):
    model = create_model("popularity").fit(_small())
    (tmp_path / "empty").mkdir()
    model.save(tmp_path / "empty")
    model.save(tmp_path / "empty")  # now holds model.json: replaced again
    assert Recommender.load(tmp_path / "empty").item_ids_.tolist() == ["w", "x", "y", "z"]
    with pytest.raises(FileExistsError, match="symbolic link"):
        (tmp_path / "link").symlink_to(tmp_path / "empty")
        model.save(tmp_path / "link")


# -- 2. a save killed between its renames is recoverable ------------------------------------


def test_kill_9_between_the_renames_loses_no_model(tmp_path):
    """A real SIGKILL at the rename that puts the new folder in place."""
    target = tmp_path / "model"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import pandas as pd
        from recsys.cf import create_model
        from recsys.interactions import Interactions
        frame = pd.DataFrame({{"user_id": ["a", "b"], "item_id": ["{{}}", "y"]}})
        create_model("popularity").fit(
            Interactions.from_frame(frame.assign(item_id=["old", "y"]))).save({str(target)!r})
        real_rename = os.rename
        def rename(src, dst):
            if str(dst) == {str(target)!r}:
                os.kill(os.getpid(), signal.SIGKILL)
            real_rename(src, dst)
        os.rename = rename
        create_model("popularity").fit(
            Interactions.from_frame(frame.assign(item_id=["new", "y"]))).save({str(target)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not target.exists()
    left = sorted(p.name.split(".")[2] for p in tmp_path.iterdir())
    assert left == ["new", "old"]  # the old model and the complete new one, both hidden
    loaded = Recommender.load(target)  # finishes the swap: the complete new copy wins
    assert "new" in loaded.item_ids_.tolist() and target.is_dir()
    create_model("popularity").fit(_small()).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # leftovers cleaned


def test_interrupted_save_leaves_the_old_model_and_next_save_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "model"
    create_model("popularity").fit(_small()).save(target)
    calls = []
    real_fsync, real_rename = files.os.fsync, files.os.rename
    monkeypatch.setattr(files.os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))

    def rename(src, dst):
        calls.append("rename")
        if Path(dst) == target:
            raise KeyboardInterrupt  # dies after moving the old folder aside
        real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        create_model("popularity").fit(_small()).save(target)
    # both files and the folder are fsynced before the first rename
    assert calls.index("rename") >= 3 and set(calls[:calls.index("rename")]) == {"fsync"}
    monkeypatch.undo()
    assert not target.exists()
    assert Recommender.load(target).item_ids_.tolist() == ["w", "x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_directory_needs_the_marker_written():
    with pytest.raises(FileExistsError, match="name a new folder"):
        with atomic_directory("/", "m.json"):
            pass


# -- 3. ids are strings; obvious column names -----------------------------------------------


def test_named_id_columns_keep_leading_zeros(tmp_path, capsys):
    log = _write(tmp_path / "log.csv", "uid,iid\n0001,0108775015\n01,0108775015\n1,0200000001\n")
    assert main(["fit", "--interactions", str(log), "--user-col", "uid", "--item-col", "iid",
                 "--model", "popularity", "--out", str(tmp_path / "m")]) == 0
    model = Recommender.load(tmp_path / "m")
    assert model.user_ids_.tolist() == ["0001", "01", "1"]
    assert model.item_ids_.tolist() == ["0108775015", "0200000001"]


def test_obvious_column_names_are_recognised(tmp_path):
    data = load_interactions(_write(tmp_path / "a.csv", "user,item\na,x\nb,y\n"))
    assert data.user_ids.tolist() == ["a", "b"] and data.item_ids.tolist() == ["x", "y"]
    data = load_interactions(_write(tmp_path / "b.csv", "Customer_ID;Article_ID\n1;07\n"))
    assert data.item_ids.tolist() == ["07"]
    with pytest.raises(ValueError, match="can't tell the item column.*--item-col"):
        load_interactions(_write(tmp_path / "c.csv", "user,thing\na,x\n"))


# -- 4. numeric times: unit by magnitude, or time_unit= ------------------------------------


def test_unix_seconds_in_any_column_are_seconds(tmp_path):
    log = _write(tmp_path / "log.csv", "user_id,item_id,when\na,x,1500000000\nb,y,1500864000\n")
    times = load_interactions(log, time_col="when").events["time"]
    assert times.tolist() == [pd.Timestamp("2017-07-14 02:40:00"),
                              pd.Timestamp("2017-07-24 02:40:00")]
    ms = _write(tmp_path / "ms.csv", "user_id,item_id,when\na,x,1500000000000\n")
    assert load_interactions(ms, time_col="when").events["time"][0].year == 2017
    days = load_interactions(_write(tmp_path / "d.csv", "user_id,item_id,when\na,x,10\n"),
                             time_col="when", time_unit="D").events["time"][0]
    assert days == pd.Timestamp("1970-01-11")
    recency = load_interactions(log, time_col="when", weighting="recency", half_life_days=10)
    assert recency.matrix.toarray().max() == 1.0 and recency.matrix.toarray().sum() == 1.5


# -- 5. k beyond the catalog ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["als", "bpr", "lmf", "itemknn", "popularity", "bpr-uniform"])
def test_k_beyond_the_catalog_returns_fewer_items_never_seen_or_repeated(name):
    params = {"factors": 4} if name in ("als", "bpr", "lmf", "bpr-uniform") else {}
    model = create_model(name, **params).fit(_small())
    items, scores = model.recommend(["a", "b"], k=10)
    for row, seen in zip(items, ({"x", "y"}, {"x", "z"}), strict=True):
        real = [i for i in row if i]
        assert len(real) == len(set(real)) and not set(real) & seen
        assert set(real) <= {"w", "x", "y", "z"} and list(row[len(real):]) == [""] * (
            10 - len(real))
    assert np.isneginf(scores[:, 2:]).all()


# -- 6. ids stored compactly, with a length cap ---------------------------------------------


def test_one_long_id_does_not_blow_up_the_model(tmp_path):
    long_id = "u" * MAX_ID_LENGTH
    frame = pd.DataFrame({"user_id": [f"user{i}" for i in range(2000)] + [long_id],
                          "item_id": [f"i{i % 50}" for i in range(2001)]})
    path = create_model("popularity").fit(Interactions.from_frame(frame)).save(tmp_path / "m")
    # fixed-width unicode would take 2001 * 256 * 4 bytes = 2 MB for the user ids alone
    assert (path / "arrays.npz").stat().st_size < 60_000
    assert Recommender.load(path).user_ids_[-1] == long_id or long_id in Recommender.load(
        path).user_ids_
    huge = _write(tmp_path / "huge.csv", f"user_id,item_id\n{'x' * 50_000},i\nb,i\n")
    with pytest.raises(ValueError, match=r"row 0: 'user_id' value 'xxx.*50000 characters long; "
                                         r"ids may have at most 256"):
        load_interactions(huge)


def test_packed_strings_round_trip_and_detect_damage():
    ids = ["", "a", "0108775015", "ünïcode", "NA"]
    packed = pack_strings(ids)
    assert unpack_strings(packed["utf8"], packed["ends"]).tolist() == ids
    with pytest.raises(ValueError, match="damaged"):
        unpack_strings(packed["utf8"][:-1], packed["ends"])


# -- 7. unknown-item history, iterations=0, NaN factors ------------------------------------


def test_history_of_unknown_items_is_an_error_not_arbitrary_items():
    model = create_model("als", factors=4).fit(_small())
    history = Interactions.from_frame(pd.DataFrame({"user_id": ["new"], "item_id": ["never"]}))
    with pytest.raises(ValueError, match=r"\['new'\].*none of their history items was seen"):
        model.recommend(["new"], k=2, history=history)
    pop = create_model("popularity").fit(_small())
    assert pop.recommend(["new"], k=1, history=history)[0].tolist() == [["x"]]


@pytest.mark.parametrize("name", ["als", "bpr", "lmf", "bpr-uniform"])
def test_iterations_zero_is_refused(name, tmp_path, log_csv, capsys):
    with pytest.raises(ValueError, match="iterations must be (an integer )?>= 1"):
        create_model(name, iterations=0)
    assert main(["fit", "--interactions", str(log_csv), "--model", name, "--param",
                 "iterations=0", "--out", str(tmp_path / "m")]) == 2
    assert "iterations must be" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_nan_factors_are_an_error_with_the_fix(tmp_path, capsys):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 30, 300).astype(str),
                          "item_id": rng.integers(0, 20, 300).astype(str),
                          "plays": rng.integers(1, 10**9, 300)})
    frame.to_csv(tmp_path / "plays.csv", index=False)
    assert main(["fit", "--interactions", str(tmp_path / "plays.csv"), "--weighting", "value",
                 "--param", "alpha=1e38", "--param", "factors=4",
                 "--out", str(tmp_path / "m")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "m").exists()
    model = create_model("als", factors=4).fit(_small())
    model.user_factors_[0, 0] = np.nan
    model.save(tmp_path / "nan")
    with pytest.raises(ValueError, match="NaN or infinite when loading"):
        Recommender.load(tmp_path / "nan")


def test_unknown_and_badly_typed_params_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['factor'\].*'factors'"):
        create_model("als", factor=8)
    with pytest.raises(ValueError, match="factors must be an integer, got 'abc'"):
        create_model("als", factors="abc")
    with pytest.raises(ValueError, match="regularization must be a finite number"):
        create_model("als", regularization="high")
    assert create_model("als", random_state=None).random_state is None


# -- loading: headerless, Latin-1, NA ids, dates, empty files ------------------------------


def test_headerless_file_with_columns(tmp_path):
    plays = _write(tmp_path / "plays.tsv", "a\tx\t3\nb\ty\t352698\n")
    data = load_interactions(plays, header=False, columns=["user", "item", "plays"],
                             weighting="value")
    assert data.matrix.toarray().tolist() == [[3.0, 0.0], [0.0, 352698.0]]
    with pytest.raises(ValueError, match="without a header line, name the columns"):
        load_interactions(plays, header=False)
    with pytest.raises(ValueError, match="3 columns in its first line, but 2 names"):
        load_interactions(plays, header=False, columns=["user", "item"])


def test_latin1_na_and_null_ids(tmp_path, caplog):
    log = tmp_path / "latin.csv"
    log.write_bytes("user_id,item_id\ncaf\xe9,NA\nnull,x\n,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match="row 2: empty 'user_id'"):
        load_interactions(log)
    log.write_bytes("user_id,item_id\ncaf\xe9,NA\nnull,x\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        data = load_interactions(log)
    assert data.user_ids.tolist() == ["café", "null"] and data.item_ids.tolist() == ["NA", "x"]
    assert "not UTF-8; read it as Latin-1" in caplog.text


def test_ambiguous_dates_need_a_format_and_the_order_used_is_said(tmp_path, caplog):
    log = _write(tmp_path / "d.csv", "user_id,item_id,date\na,x,01/02/2018\nb,y,03/04/2018\n")
    with pytest.raises(ValueError, match=r"'01/02/2018' can be day/month or month/day.*"
                                         r"--date-format '%d/%m/%Y' or '%m/%d/%Y'"):
        load_interactions(log)
    assert load_interactions(log, date_format="%d/%m/%Y").events["time"][0] == pd.Timestamp(
        "2018-02-01")
    _write(log, "user_id,item_id,date\na,x,01/02/2018\nb,y,13/04/2018\n")
    with caplog.at_level(logging.WARNING):
        times = load_interactions(log).events["time"].tolist()
    assert times == [pd.Timestamp("2018-02-01"), pd.Timestamp("2018-04-13")]
    assert "reading dates as %d/%m/%Y (row 1 has '13/04/2018')" in caplog.text
    iso = _write(tmp_path / "iso.csv", "user_id,item_id,t_dat\na,x,2018-02-01\n")
    assert load_interactions(iso).events["time"][0] == pd.Timestamp("2018-02-01")


def test_empty_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="empty.csv is empty"):
        load_interactions(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(ValueError, match="interaction log is empty"):
        load_interactions(_write(tmp_path / "header.csv", "user_id,item_id\n"))


# -- confidence transforms ------------------------------------------------------------------


def test_log1p_and_bm25_weightings_and_the_wide_span_warning(caplog):
    frame = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "y"],
                          "plays": [1.0, 352698.0, 10.0, 10.0]})
    with caplog.at_level(logging.WARNING):
        raw = Interactions.from_frame(frame, value_col="plays", weighting="value").matrix
    assert "more than three orders of magnitude" in caplog.text and raw.max() == 352698.0
    log1p = Interactions.from_frame(frame, value_col="plays", weighting="log1p").matrix
    np.testing.assert_allclose(log1p.toarray(), np.log1p([[1.0, 352698.0], [10.0, 10.0]]),
                               rtol=1e-6)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"user_id": rng.integers(0, 6, 60).astype(str),
                          "item_id": rng.integers(0, 40, 60).astype(str),
                          "plays": rng.integers(1, 1000, 60).astype(float)})
    data = Interactions.from_frame(frame, value_col="plays", weighting="bm25")
    summed = Interactions.from_frame(frame, value_col="plays", weighting="value").matrix
    # reference: Okapi BM25 on the items x users matrix (documents = items), dense numpy
    x = summed.toarray().T.astype(np.float64)
    idf = np.log(x.shape[0]) - np.log1p((x > 0).sum(axis=0))
    length = x.sum(axis=1, keepdims=True)
    norm = 0.2 + 0.8 * length / length.mean()
    expected = np.where(x > 0, x * 101 / (100 * norm + x) * idf, 0).T
    assert (idf > 0).all()
    np.testing.assert_allclose(data.matrix.toarray(), expected, rtol=1e-5)


# -- catalog: GIF/BMP, escaping links --------------------------------------------------------


def test_gif_and_bmp_are_catalog_images_and_an_escaping_link_skips_one_item(tmp_path):
    from ground.tensors import load_image

    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (12, 9), "red").save(root / "a.gif")
    Image.new("RGB", (8, 6), "blue").save(root / "b.bmp")
    Image.new("RGB", (8, 6), "green").save(tmp_path / "secret.png")
    (root / "evil.png").symlink_to(tmp_path / "secret.png")
    catalog = Catalog.from_directory(root)
    assert catalog.item_ids == ["a", "b"] and "resolves outside" in catalog.skipped["evil"]
    assert tuple(load_image(catalog.path("a"), 64).shape) == (3, 9, 12)
    with pytest.raises(NotADirectoryError, match="image folder not found"):
        Catalog.from_directory(tmp_path / "nope")


def test_a_recognised_time_or_value_column_that_is_not_one_is_left_out(tmp_path, caplog):
    log = _write(tmp_path / "log.csv", "user,item,time,count\na,x,morning,-1\nb,y,noon,2\n")
    with caplog.at_level(logging.WARNING):
        data = load_interactions(log)
    assert data.source["columns"] == ["user", "item", None, None]
    assert "ignoring column 'time'" in caplog.text and "ignoring column 'count'" in caplog.text
    with pytest.raises(ValueError, match="row 0: can't read 'time' value 'morning'"):
        load_interactions(log, time_col="time")


def test_weights_are_found_relative_to_the_working_directory(tmp_path, weights_dir,
                                                               monkeypatch, capsys):
    import shutil

    shutil.copy(weights_dir / "fast_style" / "candy.pth", tmp_path / "candy.pth")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    assert main(["render", "--item", "a.png", "--styler", "fast", "--param", "weights=candy.pth",
                 "--device", "cpu", "--no-progress", "--cache-dir", "cache", "--out", "r"]) == 0
    assert "1 renders (0 cached)" in capsys.readouterr().out
    assert (tmp_path / "r" / "index.html").is_file()
