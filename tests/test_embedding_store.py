"""EmbeddingStore: caching by content hash, failures, crash + resume, mmap reads, read-only use."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from recsys.embedding_store import EmbeddingStore
from recsys.encoders import ImageEncoder


class ColourEncoder(ImageEncoder):
    """Tiny deterministic encoder (mean colour of an 8x8 thumbnail) that counts its work."""

    name = "test-colour"

    def __init__(self, fail_after_batches: int | None = None, **kwargs):
        super().__init__(device="cpu", num_workers=1, **kwargs)
        self.fail_after_batches = fail_after_batches
        self.encoded_ = 0
        self.batches_ = 0

    def config(self):
        return {"size": 8}

    def weights_id(self):
        return "none"

    @property
    def dim(self):
        return 4

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.resize((8, 8)), np.float32).copy())

    def forward(self, batch):
        if self.fail_after_batches is not None and self.batches_ >= self.fail_after_batches:
            raise RuntimeError("simulated crash")
        self.batches_ += 1
        self.encoded_ += len(batch)
        mean = batch.mean((1, 2))
        return torch.cat([mean, torch.ones(len(batch), 1)], 1)


def _expected(colour):
    v = np.array([*colour, 1.0], np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def catalog(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    ids, paths, colours = [], [], []
    for i in range(10):
        colour = (i * 20, 100, 255 - i * 20)
        path = folder / f"item{i}.png"
        Image.new("RGB", (16, 16), colour).save(path)
        ids.append(f"item{i}")
        paths.append(path)
        colours.append(colour)
    return ids, paths, colours


def test_round_trip_second_run_computes_nothing(tmp_path, catalog):
    ids, paths, colours = catalog
    encoder = ColourEncoder(batch_size=3)
    store = EmbeddingStore(tmp_path / "store", encoder, shard_size=4)
    vectors, ok, failures = store.get_or_compute(ids, paths, progress=False)
    assert ok.all() and failures == {} and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, [_expected(c) for c in colours], atol=1e-6)
    assert encoder.encoded_ == 10 and store.misses_ == 10
    shards = sorted(store.path_.glob("shard-*.npy"))  # flushed once >= 4 rows: 6 + 4
    assert [len(np.load(s, mmap_mode="r")) for s in shards] == [6, 4]

    again = EmbeddingStore(tmp_path / "store", ColourEncoder())
    second = again.get_or_compute(ids[::-1], paths[::-1], progress=False)
    assert again.encoder.encoded_ == 0 and again.hits_ == 10 and again.misses_ == 0
    np.testing.assert_array_equal(second.vectors, vectors[::-1])


def test_identical_images_are_computed_once_and_renames_are_free(tmp_path, catalog):
    ids, paths, _ = catalog
    copy = paths[0].with_name("renamed.png")
    copy.write_bytes(paths[0].read_bytes())
    encoder = ColourEncoder()
    store = EmbeddingStore(tmp_path / "store", encoder)
    vectors, ok, _ = store.get_or_compute([*ids, "copy"], [*paths, copy], progress=False)
    assert encoder.encoded_ == 10 and ok.all()
    np.testing.assert_array_equal(vectors[-1], vectors[0])


def test_bad_images_are_reported_by_id_and_do_not_stop_the_batch(tmp_path, catalog, caplog):
    ids, paths, colours = catalog
    paths = list(paths)
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    paths[2] = tmp_path / "images" / "missing.png"
    paths[5] = tmp_path / "images" / "corrupt.png"
    store = EmbeddingStore(tmp_path / "store", ColourEncoder(batch_size=4))
    with caplog.at_level(logging.WARNING, logger="recsys.embedding_store"):
        vectors, ok, failures = store.get_or_compute(ids, paths, progress=False)
    assert set(failures) == {"item2", "item5"}
    assert "missing.png" in failures["item2"] and "corrupt.png" in failures["item5"]
    assert ok.tolist() == [i not in (2, 5) for i in range(10)]
    assert not vectors[[2, 5]].any()
    np.testing.assert_allclose(vectors[9], _expected(colours[9]), atol=1e-6)
    assert "item2" in caplog.text and "item5" in caplog.text


def test_resume_after_crash_reuses_finished_shards(tmp_path, catalog):
    ids, paths, _ = catalog
    crashing = ColourEncoder(fail_after_batches=2, batch_size=2)
    store = EmbeddingStore(tmp_path / "store", crashing, shard_size=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.get_or_compute(ids, paths, progress=False)
    shards = sorted(store.path_.glob("shard-*.npy"))
    assert len(shards) == 2  # two flushed batches survive
    assert not list(store.path_.glob(".*.tmp"))  # no half-written files left behind

    resumed = ColourEncoder(batch_size=2)
    store = EmbeddingStore(tmp_path / "store", resumed, shard_size=2)
    vectors, ok, failures = store.get_or_compute(ids, paths, progress=False)
    assert ok.all() and not failures
    assert resumed.encoded_ == 6 and store.hits_ == 4


def test_writers_sharing_a_folder_never_overwrite_each_others_shards(tmp_path, catalog,
                                                                    monkeypatch):
    # two machines writing one shared folder: same clock reading, same process id
    ids, paths, colours = catalog
    monkeypatch.setattr("recsys.embedding_store.time.time_ns", lambda: 1_700_000_000)
    monkeypatch.setattr("recsys.embedding_store.os.getpid", lambda: 4242)
    writers = [EmbeddingStore(tmp_path / "store", ColourEncoder(batch_size=5), shard_size=5)
               for _ in range(2)]
    for writer, part in zip(writers, (slice(0, 5), slice(5, 10)), strict=True):
        hashes, todo, _, _ = writer.plan(ids[part], paths[part])
        assert writer.write(ids[part], paths[part], hashes, progress=False) == {}
    monkeypatch.undo()
    reader = EmbeddingStore(tmp_path / "store", ColourEncoder())
    assert len(list(reader.path_.glob("shard-*.npy"))) == 2 and len(reader) == 10
    vectors, ok, _ = reader.get_or_compute(ids, paths, progress=False)
    assert ok.all() and reader.misses_ == 0
    np.testing.assert_allclose(vectors, [_expected(c) for c in colours], atol=1e-6)


def test_plan_lists_only_what_is_missing_and_write_stores_it(tmp_path, catalog):
    ids, paths, _ = catalog
    encoder = ColourEncoder(batch_size=4)
    store = EmbeddingStore(tmp_path / "store", encoder, shard_size=100)
    store.get_or_compute(ids[:3], paths[:3], progress=False)
    hashes, todo, hits, failures = store.plan(ids, paths)
    assert hits == 3 and failures == {} and sorted(todo.values()) == list(range(3, 10))
    first = list(todo.values())
    store.write([ids[i] for i in first], [paths[i] for i in first], list(todo), progress=False)
    assert encoder.encoded_ == 10  # 3 + 7: nothing twice
    assert store.plan(ids, paths).todo == {}


def test_reads_are_memory_mapped_and_compaction_keeps_vectors(tmp_path, catalog):
    ids, paths, _ = catalog
    store = EmbeddingStore(tmp_path / "store", ColourEncoder(batch_size=3), shard_size=3)
    before = store.get_or_compute(ids, paths, progress=False).vectors
    assert all(isinstance(s.base, np.memmap) or isinstance(s, np.memmap) for s in store._shards)
    merged = store.compact()
    assert [p.name for p in store.path_.glob("shard-*.npy")] == [merged.name]
    rows = np.load(merged, mmap_mode="r")
    assert isinstance(rows, np.memmap) and len(rows) == 10
    after = EmbeddingStore(tmp_path / "store", ColourEncoder()).get_or_compute(
        ids, paths, progress=False)
    np.testing.assert_array_equal(after.vectors, before)


def test_read_only_by_encoder_id_and_encoder_separation(tmp_path, catalog):
    ids, paths, _ = catalog
    encoder = ColourEncoder()
    EmbeddingStore(tmp_path / "store", encoder).get_or_compute(ids[:5], paths[:5], progress=False)
    reader = EmbeddingStore(tmp_path / "store", encoder.encoder_id)
    vectors, ok, failures = reader.get_or_compute(ids, paths, progress=False)
    assert ok.tolist() == [True] * 5 + [False] * 5
    assert set(failures) == {f"item{i}" for i in range(5, 10)}
    with pytest.raises(FileNotFoundError, match="no embeddings of encoder"):
        EmbeddingStore(tmp_path / "store", "some-other-encoder(x=1)@none")

    class Other(ColourEncoder):
        def config(self):
            return {"size": 16}

    other = EmbeddingStore(tmp_path / "store", Other())
    assert other.path_ != reader.path_ and len(other) == 0


def test_digests_ending_in_nul_bytes_are_found(tmp_path):
    # 1 in 256 SHA-256 digests ends with 0x00; fixed-width bytes fields would drop it
    base = tmp_path / "base.png"
    Image.new("RGB", (12, 12), (10, 20, 30)).save(base)
    data = base.read_bytes()
    suffix = next(i for i in range(100_000)
                  if hashlib.sha256(data + str(i).encode()).digest()[-1] == 0)
    path = tmp_path / "nul.png"
    path.write_bytes(data + str(suffix).encode())  # bytes after IEND are ignored by decoders
    store = EmbeddingStore(tmp_path / "store", ColourEncoder())
    assert store.get_or_compute(["nul"], [path], progress=False).ok.all()
    again = EmbeddingStore(tmp_path / "store", ColourEncoder())
    result = again.get_or_compute(["nul"], [path], progress=False)
    assert result.ok.all() and again.misses_ == 0
