"""StyleIndex: exact search equals brute force, persistence, IVF/HNSW factories, safety checks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from doubles import ColourEncoder

from recsys.style_index import EncoderMismatchError, StyleIndex


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    ids = [f"style-{i}" for i in range(300)]
    return ids, _unit(rng, 300, 24), _unit(rng, 12, 24)


def test_flat_search_equals_brute_force(data):
    ids, vectors, queries = data
    index = StyleIndex().fit(ids, vectors, encoder_id="enc-a")
    found, sims = index.search(queries, k=5)
    brute = queries @ vectors.T
    order = np.argsort(-brute, axis=1)[:, :5]
    assert found.shape == (12, 5) and sims.dtype == np.float32
    assert found.tolist() == np.asarray(ids, dtype=object)[order].tolist()
    np.testing.assert_allclose(sims, np.take_along_axis(brute, order, 1), rtol=1e-5, atol=1e-6)


def test_single_vector_query_and_k_capped(data):
    ids, vectors, queries = data
    index = StyleIndex().fit(ids[:4], vectors[:4])
    found, sims = index.search(queries[0], k=10)
    assert found.shape == (1, 4) and set(found[0]) == set(ids[:4])
    assert (np.diff(sims[0]) <= 1e-6).all()


def test_l2_metric_returns_nearest_first(data):
    ids, vectors, queries = data
    found, dist = StyleIndex(metric="l2").fit(ids, vectors).search(queries, k=3)
    brute = ((queries[:, None] - vectors[None]) ** 2).sum(-1)
    assert found[:, 0].tolist() == [ids[j] for j in brute.argmin(1)]
    assert (np.diff(dist, axis=1) >= -1e-6).all()


def test_save_load_same_results(tmp_path, data):
    ids, vectors, queries = data
    index = StyleIndex().fit(ids, vectors, encoder_id="enc-a")
    before = index.search(queries, k=4)
    folder = index.save(tmp_path / "styles.index")
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "meta.json"]
    loaded = StyleIndex.load(folder)
    after = loaded.search(queries, k=4, encoder_id="enc-a")
    assert after[0].tolist() == before[0].tolist()
    np.testing.assert_array_equal(after[1], before[1])
    assert loaded.encoder_id_ == "enc-a" and len(loaded) == 300
    np.testing.assert_allclose(loaded.reconstruct(["style-7"])[0], vectors[7], atol=1e-6)


def test_load_detects_mismatched_files(tmp_path, data):
    ids, vectors, _ = data
    folder = StyleIndex().fit(ids, vectors).save(tmp_path / "a")
    other = StyleIndex().fit(ids[:10], vectors[:10]).save(tmp_path / "b")
    (folder / "index.faiss").write_bytes((other / "index.faiss").read_bytes())
    with pytest.raises(ValueError, match="does not match"):
        StyleIndex.load(folder)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        StyleIndex.load(tmp_path / "nothing")


def test_ivf_factory_trains_and_finds_exact_with_full_probe(tmp_path, data):
    ids, vectors, queries = data
    index = StyleIndex("IVF8,Flat", nprobe=8).fit(ids, vectors)
    found, _ = index.search(queries, k=3)
    exact, _ = StyleIndex().fit(ids, vectors).search(queries, k=3)
    assert found.tolist() == exact.tolist()  # nprobe = nlist visits every list
    loaded = StyleIndex.load(index.save(tmp_path / "ivf"))
    assert loaded.nprobe == 8
    assert loaded.search(queries, k=3)[0].tolist() == exact.tolist()


def test_ivf_with_too_few_vectors_is_a_clear_error(data):
    ids, vectors, _ = data
    with pytest.raises(ValueError, match="64 inverted lists but only 20 vectors"):
        StyleIndex("IVF64,Flat").fit(ids[:20], vectors[:20])


def test_hnsw_factory(data):
    ids, vectors, queries = data
    found, sims = StyleIndex("HNSW16", ef_search=128).fit(ids, vectors).search(queries, k=1)
    brute = (queries @ vectors.T).argmax(1)
    assert (found[:, 0] == np.asarray(ids, dtype=object)[brute]).mean() >= 0.9
    assert sims.shape == (12, 1)


def test_dimension_and_encoder_mismatch_errors(data):
    ids, vectors, queries = data
    index = StyleIndex().fit(ids, vectors, encoder_id="efficientnet-lite0(...)@sha256:1")
    with pytest.raises(ValueError, match="dimension 23 but the index holds 24-d"):
        index.search(queries[:, :23], k=1)
    with pytest.raises(EncoderMismatchError, match="openclip"):
        index.search(queries, k=1, encoder_id="openclip(model=ViT-B-32)@pretrained:x")
    with pytest.raises(ValueError, match="appears 2 times"):
        StyleIndex().fit(["a", "a"], vectors[:2])
    with pytest.raises(ValueError, match="bad FAISS factory"):
        StyleIndex("NoSuchIndex").fit(ids, vectors)
    with pytest.raises(RuntimeError, match="not fitted"):
        StyleIndex().search(queries, 1)


def test_meta_json_has_no_pickle_and_lists_ids(tmp_path, data):
    ids, vectors, _ = data
    folder = StyleIndex().fit(ids[:3], vectors[:3], encoder_id="e").save(tmp_path / "i")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["ids"] == ids[:3] and meta["encoder_id"] == "e" and meta["dim"] == 24


def test_faiss_and_torch_work_together_in_one_process():
    # OpenMP runtimes of faiss and torch can clash; run both in a fresh interpreter
    code = (
        "import faiss, torch, numpy as np\n"
        "torch.set_num_threads(2); faiss.omp_set_num_threads(2)\n"
        "x = np.random.default_rng(0).standard_normal((500, 32)).astype('float32')\n"
        "index = faiss.IndexFlatIP(32); index.add(x)\n"
        "_, found = index.search(x[:50], 1)\n"
        "assert (found[:, 0] == np.arange(50)).all()\n"
        "y = torch.nn.functional.conv2d(torch.ones(2, 3, 16, 16), torch.ones(4, 3, 3, 3))\n"
        "assert float(y[0, 0, 5, 5]) == 27.0\n"
        "_, found = index.search(x[50:60], 1)\n"
        "assert (found[:, 0] == np.arange(50, 60)).all()\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_build_from_a_folder_skips_bad_images_and_records_the_encoder(tmp_path, caplog):
    from PIL import Image


    colours = {"red": (250, 5, 5), "green": (5, 250, 5), "blue": (5, 5, 250)}
    for name, colour in colours.items():
        Image.new("RGB", (20, 30), colour).save(tmp_path / f"{name}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    encoder = ColourEncoder()
    index = StyleIndex().build(tmp_path, encoder)
    assert sorted(index.ids_.tolist()) == ["blue", "green", "red"]
    assert "broken.jpg" in caplog.text
    assert index.encoder_id_ == encoder.encoder_id
    query = [Image.new("RGB", (10, 10), (0, 10, 240))]
    found, _ = index.search_encoded(query, encoder, k=1)
    assert found[0, 0] == "blue"
