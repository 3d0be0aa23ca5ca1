import json
from pathlib import Path

import pytest

from stylerec.cli import main, parse_params


def test_fit_then_recommend_on_demo_data(demo_dir, tmp_path, capsys):
    log = demo_dir / "transactions.csv"
    assert main(["fit", "--interactions", str(log), "--model", "als", "--param", "factors=16",
                 "--out", str(tmp_path / "als")]) == 0
    user = log.read_text().splitlines()[1].split(",")[1]
    capsys.readouterr()
    assert main(["recommend", "--model-dir", str(tmp_path / "als"), "--user", user, "-k", "5",
                 "--json"]) == 0
    slate = json.loads(capsys.readouterr().out)[0]
    assert slate["user_id"] == user and len(slate["items"]) == 5
    scores = [e["score"] for e in slate["items"]]
    assert scores == sorted(scores, reverse=True)


def test_errors_are_reported_not_raised(demo_dir, tmp_path, capsys):
    main(["fit", "--interactions", str(demo_dir / "transactions.csv"), "--model", "popularity",
          "--out", str(tmp_path / "pop")])
    assert main(["recommend", "--model-dir", str(tmp_path / "pop"), "--user", "ghost"]) == 2
    assert "unknown user id(s) ['ghost']" in capsys.readouterr().err
    assert main(["recommend", "--model-dir", str(tmp_path / "missing"), "--user", "x"]) == 2


def test_parse_params_types():
    assert parse_params(["factors=64", "alpha=2.5", "similarity=bm25", "flag=true"]) == {
        "factors": 64, "alpha": 2.5, "similarity": "bm25", "flag": True}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["oops"])


def test_fit_pipeline_then_recommend_and_render(demo_dir, tmp_path, capsys):
    """`fit --images --styles` builds every stage; `recommend --render` renders the slate."""
    import shutil

    import pandas as pd

    log = pd.read_csv(demo_dir / "transactions.csv", dtype=str)
    users = log["customer_id"].drop_duplicates().iloc[:6]
    small = log[log["customer_id"].isin(users)]
    small.to_csv(tmp_path / "t.csv", index=False)
    for item in small["article_id"].unique():
        target = tmp_path / "images" / f"{item}.jpg"
        target.parent.mkdir(exist_ok=True)
        shutil.copy(demo_dir / "images" / item[:3] / f"{item}.jpg", target)
    (tmp_path / "images" / "cold.jpg").write_bytes(
        (tmp_path / "images" / f"{small['article_id'].iloc[0]}.jpg").read_bytes())
    styles = tmp_path / "styles"
    styles.mkdir()
    for name in ("wave", "mondrian"):
        shutil.copy(demo_dir / "styles" / f"{name}.jpg", styles / f"{name}.jpg")

    assert main(["fit", "--interactions", str(tmp_path / "t.csv"), "--param", "factors=4",
                 "--images", str(tmp_path / "images"), "--styles", str(styles),
                 "--cache-dir", str(tmp_path / "emb"), "--out", str(tmp_path / "model")]) == 0
    assert "StyleRecommender" in capsys.readouterr().out
    user = users.iloc[0]
    assert main(["recommend", "--model-dir", str(tmp_path / "model"), "--user", user, "-k", "50",
                 "--json", "--render", "--styler", "color", "--protect", "--no-progress",
                 "--cache-dir", str(tmp_path / "renders"), "--out", str(tmp_path / "gallery")]) == 0
    printed = capsys.readouterr()
    slate = json.loads(printed.out)[0]
    # the slates also come as an HTML gallery: style, then each item's photo and render
    page = (tmp_path / "gallery" / "index.html").read_text()
    assert f"gallery: {tmp_path / 'gallery' / 'index.html'}" in printed.err
    assert f"user {user}" in page and page.count("<figure>") == len(slate["entries"])
    for entry in slate["entries"]:
        render = Path(entry["image"]).relative_to(tmp_path)
        assert f'src="../{render.as_posix()}"' in page
    bought = set(small.loc[small["customer_id"] == user, "article_id"])
    recommended = [e["item_id"] for e in slate["entries"]]
    assert recommended and not bought & set(recommended)
    assert "cold" in recommended  # an image nobody bought can rank
    assert slate["style"]["style_id"] in {"wave", "mondrian"}
    assert all(Path(e["image"]).is_file() for e in slate["entries"])
    assert main(["recommend", "--model-dir", str(tmp_path / "model"), "--user", user,
                 "--keep-seen"]) == 2
