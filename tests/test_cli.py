import json

import pytest

from recsys.cli import main, parse_params


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
    with pytest.raises(Exception, match="key=value"):
        parse_params(["oops"])
