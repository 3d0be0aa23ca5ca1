"""Batch jobs on a local Ray cluster: the same embeddings, render keys and pixels as the local
engine; interrupted jobs rerun to completion with nothing computed twice; bad images by id.

Each Ray job pays for its actors' start (a Python process importing torch, ~10 s on a
busy 2-core machine), so only the first test runs by default; ``-m slow`` runs the rest.
"""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest
from PIL import Image

from recsys.catalog import Catalog
from recsys.embedding_store import EmbeddingStore
from recsys.encoders import create_encoder
from stylerec.batch import RayOptions, embed_catalog, render_batch

ray = pytest.importorskip("ray")

import test_batch  # noqa: E402  (helpers shipped to the actors by value)
from test_batch import CountingEncoder, count, counting_renderer, write_images  # noqa: E402

TWO_ACTORS = RayOptions(workers=2, cpus_per_worker=1)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    # more logical CPUs than actors, so nothing waits for a free slot on 2 real cores
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[test_batch.__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[test_batch.__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 16)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return Catalog.from_directory(folder)


def test_ray_embeddings_equal_the_local_ones(tmp_path, catalog):
    make = functools.partial(create_encoder, "efficientnet-lite0", device="cpu", batch_size=4)
    local = embed_catalog(catalog, make, tmp_path / "local", shard_size=4, progress=False)
    remote = embed_catalog(catalog, make, tmp_path / "ray", engine="ray", shard_size=4,
                           ray=TWO_ACTORS, progress=False)
    assert (local.computed, remote.computed) == (16, 16)
    assert local.compute_cpu_seconds > 0 and remote.compute_cpu_seconds > 0
    assert set(local.failures) == set(remote.failures) == {"broken"}
    assert "broken.jpg" in remote.failures["broken"]
    ids = catalog.item_ids
    paths = [catalog.path(i) for i in ids]
    ours = EmbeddingStore(tmp_path / "local", make().encoder_id).get_or_compute(ids, paths)
    theirs = EmbeddingStore(tmp_path / "ray", make().encoder_id).get_or_compute(ids, paths)
    assert (theirs.ok == ours.ok).all() and ours.ok.sum() == 16
    assert np.abs(theirs.vectors - ours.vectors).max() <= 1e-5
    shards = list(EmbeddingStore(tmp_path / "ray", make().encoder_id).path_.glob("shard-*"))
    assert len(shards) == 5  # one per actor call: 17 listed (with broken.jpg) in calls of 4


@pytest.mark.slow  # three Ray jobs (~30 s on a busy 2-core machine); the same on local: test_batch
def test_interrupted_ray_embedding_reruns_without_computing_twice(tmp_path, catalog):
    log = str(tmp_path / "work.log")
    # a crash in the third call of one actor: the two finished calls' shards survive
    crashing = functools.partial(CountingEncoder, log, fail_at=6, batch_size=4)
    with pytest.raises(Exception, match="injected crash"):
        embed_catalog(catalog, crashing, tmp_path / "store", engine="ray", shard_size=4,
                      ray=RayOptions(workers=1), progress=False)
    crashed_at = count(log)
    assert crashed_at == 7  # [broken + 3 images] then [4]
    # then a run stopped by --limit (broken.jpg, always missing, takes one of the 4 slots),
    # then the rest, on two actors
    make = functools.partial(CountingEncoder, log, batch_size=4)
    limited = embed_catalog(catalog, make, tmp_path / "store", engine="ray", shard_size=4,
                            limit=4, ray=TWO_ACTORS, progress=False)
    rest = embed_catalog(catalog, make, tmp_path / "store", engine="ray", shard_size=4,
                         ray=TWO_ACTORS, progress=False)
    assert (limited.cached, limited.computed, limited.left) == (7, 3, 6)
    assert (rest.cached, rest.computed, rest.left) == (10, 6, 0)
    assert count(log) == 16  # every image encoded exactly once over the three runs
    assert len(EmbeddingStore(tmp_path / "store", make())) == 16


@pytest.mark.slow  # two Ray jobs (~40 s on a busy 2-core machine)
def test_ray_renders_have_the_local_keys_and_pixels(tmp_path, catalog):
    styles = write_images(tmp_path / "styles", 2, seed=1, size=20)
    items = [(i, str(catalog.path(i))) for i in catalog.item_ids[:5]]  # broken + 4 images
    pairs = [(i, p, s.stem, str(s)) for s in styles for i, p in items] * 3
    log = str(tmp_path / "work.log")
    local = render_batch(pairs, functools.partial(counting_renderer, str(tmp_path / "local")),
                         progress=False)
    make = functools.partial(counting_renderer, str(tmp_path / "ray"), log)
    first = render_batch(pairs, make, engine="ray", shard_size=2, limit=3, ray=TWO_ACTORS,
                         progress=False)
    rest = render_batch(pairs, make, engine="ray", shard_size=2, ray=TWO_ACTORS, progress=False)
    assert local.computed == 8 and set(local.failures) == {"broken/img00", "broken/img01"}
    assert set(first.failures) | set(rest.failures) == set(local.failures)
    assert first.computed + rest.computed == 8 and count(log) == 8  # nothing rendered twice
    local_files = {p.relative_to(tmp_path / "local")
                   for p in (tmp_path / "local").rglob("*.png")}
    ray_files = {p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.png")}
    assert len(local_files) == 8 and ray_files == local_files
    for name in local_files:
        a = np.asarray(Image.open(tmp_path / "local" / name))
        b = np.asarray(Image.open(tmp_path / "ray" / name))
        assert np.array_equal(a, b), name


def test_actor_pool_defaults_follow_the_cluster():
    from stylerec.ray_jobs import actor_resources

    # the module's cluster: 4 logical CPUs, no GPU; one CPU is left for Ray's own tasks
    assert actor_resources(RayOptions()) == (3, 1.0, 0.0)
    assert actor_resources(RayOptions(cpus_per_worker=0.5)) == (6, 0.5, 0.0)
    assert actor_resources(RayOptions(workers=2, cpus_per_worker=2)) == (2, 2, 0.0)
    with pytest.raises(ValueError, match="GPU"):
        actor_resources(RayOptions(gpus_per_worker=1))
    with pytest.raises(ValueError, match="no Ray actor fits"):
        actor_resources(RayOptions(cpus_per_worker=8))
