"""The ``engine`` stage of ``stylerec bench``: the embedding job on Ray Data against the local one.

Batch jobs are the app layer, which evaluation does not import, so the stage runs the
``stylerec embed`` command itself, in a subprocess, on the first ``engine_images``
images of the catalog (``--limit``), each run into a fresh embedding store, with
``--engine local`` and ``--engine ray`` alternately in ABBA order (local first on even
rounds), so load on a shared machine hits both sides alike. "ours" is Ray, "bare" the
local engine: the ratio is Ray's time over the local time.

Three figures per run, from the job's ``--json`` report and the clock:

``compute``
    Computing alone: local, encoding and writing shards; Ray, starting the actors
    (each loads the model) plus the same work. The overhead-ratio target applies here.
``job``
    Listing, hashing, Ray cluster start and computing.
``process``
    The whole command, interpreter and library imports included.

CPU time: for ``compute``, the job's own ``compute_cpu_seconds`` (all threads of the
local process, or of the Ray actors' calls plus the driver), which a shared machine's
load does not inflate the way it does wall time; for ``job`` and ``process``, that of
the reaped child processes (Ray's workers only as far as they are reaped).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from evaluation.bench_timing import Measurement, Samples, Target, load_average

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
RAY_OVERHEAD_TARGET = 1.3
ENGINES = ("local", "ray")


def embed_command(images: Path, store: Path, engine: str, n: int, encoder: str,
                  device: str, batch_size: int, workers: int, cpus_per_worker: float,
                  shard_size: int) -> list[str]:
    """The ``stylerec embed`` command line of one run."""
    command = [sys.executable, "-m", "stylerec", "embed", "--images", str(images),
               "--encoder", encoder, "--cache-dir", str(store), "--limit", str(n),
               "--device", device, "--batch-size", str(batch_size),
               "--shard-size", str(shard_size), "--engine", engine, "--json"]
    if engine == "ray":
        command += ["--workers", str(workers), "--cpus-per-worker", str(cpus_per_worker)]
    return command


def run_embed(command: list[str]) -> tuple[dict[str, Any], float, float]:
    """Run one ``stylerec embed --json``: ``(its report, wall seconds, child CPU seconds)``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(done.stdout), wall, cpu


def stage_engine(ctx: Any, scale: int) -> list[Measurement]:
    """Images/s of ``stylerec embed`` on Ray vs locally, side by side (see the module doc)."""
    cfg = ctx.config
    if cfg.images is None or not Path(cfg.images).is_dir():
        raise FileNotFoundError(f"image folder not found: {cfg.images}")
    n = cfg.engine_images
    # one shard (one Ray actor call) per ~1/8 of each actor's share: balanced, few shards
    shard_size = max(cfg.batch_size, n // (8 * cfg.engine_workers))
    cpus_per_worker = os.cpu_count() / cfg.engine_workers / 2  # leave CPUs for Ray's tasks
    sides = {engine: {"compute": Samples(), "job": Samples(), "process": Samples()}
             for engine in ENGINES}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for round_ in range(cfg.engine_rounds):
            order = ENGINES if round_ % 2 == 0 else ENGINES[::-1]
            for engine in order:
                store = Path(tmp) / f"{engine}-{round_}"
                command = embed_command(cfg.images, store, engine, n, cfg.encoder, cfg.device,
                                        cfg.batch_size, cfg.engine_workers, cpus_per_worker,
                                        shard_size)
                load = load_average()
                report, wall, cpu = run_embed(command)
                if report["computed"] + len(report["failures"]) < n:
                    raise RuntimeError(f"{engine} run computed {report['computed']} of {n}")
                sides[engine]["compute"].add(report["compute_seconds"],
                                             report["compute_cpu_seconds"])
                sides[engine]["job"].add(report["seconds"], cpu)
                sides[engine]["process"].add(wall, cpu)
                runs.append({"engine": engine, "round": round_, "load_average": load,
                             "process_seconds": wall, "report": report,
                             "command": " ".join(command[1:])})
                log.info("engine %s round %d: %.1f images/s (compute), load %s", engine,
                         round_, report["per_second"], load)
    params = {"images": n, "encoder": cfg.encoder, "device": cfg.device,
              "batch_size": cfg.batch_size, "shard_size": shard_size,
              "ray_workers": cfg.engine_workers, "cpus_per_worker": cpus_per_worker,
              "rounds": cfg.engine_rounds, "runs": runs}
    label = "stylerec embed --engine local (same images, fresh store)"
    return [
        Measurement("engine", f"embed {what}", scale, "throughput", "images", n,
                    sides["ray"][what], sides["local"][what], label, params,
                    Target("ratio", RAY_OVERHEAD_TARGET) if what == "compute" else None)
        for what in ("compute", "job", "process")
    ]
