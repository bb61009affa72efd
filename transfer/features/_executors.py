"""Where the CNN pass of feature extraction runs: in this process, or on a Ray cluster.

``local`` runs the frozen backbone here, shard by shard.  ``ray`` (this
machine's own Ray, started for the run) or ``ray:ADDRESS`` (a running
cluster: ``auto``, ``HOST:6379`` or ``ray://HOST:10001``) runs the same
extraction as a Ray Data pipeline: the images to extract in, ``map_batches``
over a pool of actors that each build the extractor once, features out.  The
driver writes what comes back into the same feature cache the local path
writes, a shard at a time, so the classifiers, the reports and ``compare``
cannot tell which executor ran.  Ray Data restarts a lost actor and retries
its batches; a run that fails anyway leaves only whole shards behind.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from transfer.errors import TransferError

EXECUTORS = ("local", "ray")
RAY_INSTALL = "pip install -e '.[ray]'"


@dataclasses.dataclass(frozen=True)
class Executor:
    """A parsed ``--executor``: ``local``, ``ray`` or ``ray:ADDRESS``."""

    kind: str = "local"
    address: str | None = None


def parse_executor(value: str) -> Executor:
    """``"local"``, ``"ray"`` or ``"ray:ADDRESS"`` -> :class:`Executor`.

    Raises:
        TransferError: anything else, naming what is allowed.
    """
    kind, _, address = str(value).partition(":")
    if kind not in EXECUTORS or (kind == "local" and address):
        raise TransferError(f"executor={value!r} is not valid: give local, ray (a Ray of this machine's own) or "
                            "ray:ADDRESS (a running cluster, e.g. ray:auto or ray:ray://head:10001).")
    return Executor(kind, address or None)


def require_ray():
    """The ``ray`` module, or a one-line error naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is its own extra of Ray
    except ImportError:
        raise TransferError(f"--executor ray needs Ray Data, which is not installed: {RAY_INSTALL} (or pip install "
                            "'ray[data]'), or use --executor local.") from None
    return ray


def connect(executor: Executor, log=print):
    """Join the Ray cluster of ``executor`` (or start this machine's own); returns the ``ray`` module."""
    import logging
    import os

    # Ray's C++ core logs an error, once per actor, that Ray Data keeps its actors' arguments in the object store
    # (ray-project/ray#53727: harmless here, the arguments live as long as the run); failures still raise.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray = require_ray()
    # Ray Data's progress lines every few seconds would bury the run's own; the bar below counts the images.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if not ray.is_initialized():
        from pathlib import Path

        import transfer

        where = executor.address or "a local Ray of this machine"
        log(f"connecting to {where}...")
        # The package travels to the workers: a cluster needs its dependencies (TensorFlow...), not this checkout.
        ray.init(address=executor.address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [str(Path(transfer.__file__).parent)]} if executor.address else None)
    return ray


def actor_class(cfg, build):
    """The class of the Ray actors that extract for ``cfg`` with the model ``build(cfg, log)`` makes (both travel
    inside the class, pickled with it)."""

    class Extractor:
        def __init__(self):
            from transfer.backbones import get_backbone
            from transfer.data import forward

            self.row = get_backbone(cfg.backbone)
            self.model = build(cfg, log=lambda *_: None)
            probe = np.zeros((1, cfg.image_size, cfg.image_size, 3), np.float32)
            self.width = int(np.prod(forward(self.model, self.row.preprocess_input(probe), 1).shape[1:]))

        def __call__(self, batch: dict) -> dict:
            from transfer.data import predict_images

            paths = [str(p) for p in batch["path"]]
            kept, feats, skipped = predict_images(self.model, paths, cfg.image_size, cfg.resize, cfg.batch_size,
                                                  self.row.preprocess_input)
            out = np.zeros((len(paths), self.width), np.float32)
            out[kept] = feats
            return {"id": batch["id"], "path": batch["path"], "features": out,
                    "reason": np.array([skipped.get(p, "") for p in paths], dtype=str)}

    return Extractor


def fill_on_ray(store, missing: dict, cfg, executor: Executor, build, *, actors=None, actor_cpus=1.0,
                actor_gpus=0.0, progress=True, log=print) -> float:
    """Extract the images ``missing`` (``{id: path}``) on Ray into ``store``; returns the seconds.

    Args:
        build: ``build(cfg, log)`` makes the extractor, once in each actor.
        actors: the actor pool's size (default: the cluster's CPUs / ``actor_cpus``, or its GPUs / ``actor_gpus``).
        actor_cpus, actor_gpus: what each actor reserves.
    """
    from transfer.features._cache import SHARD_ROWS

    ray = connect(executor, log)
    start = time.perf_counter()
    resources = ray.cluster_resources()
    for what, each in (("GPU", actor_gpus), ("CPU", actor_cpus)):
        if each and resources.get(what, 0) < each:
            raise TransferError(f"--actor-{what.lower()}s {each:g}: the Ray cluster has {resources.get(what, 0):g} "
                                f"{what}(s), so no actor could start; give at most that, or use a cluster with them.")
    if actors is None:
        actors = int(resources.get("GPU", 0) // actor_gpus) if actor_gpus else \
            int(resources.get("CPU", 1) // actor_cpus)
    actors = max(1, min(actors, -(-len(missing) // cfg.batch_size)))
    log(f"extracting {len(missing):,} images on Ray: {actors} actor(s) x {actor_cpus:g} CPU"
        + (f" x {actor_gpus:g} GPU" if actor_gpus else ""))
    items = [{"id": i, "path": p} for i, p in missing.items()]
    data = ray.data.from_items(items, override_num_blocks=max(actors, -(-len(items) // (cfg.batch_size * 8))))
    done = data.map_batches(actor_class(cfg, build), batch_size=cfg.batch_size * 4,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                            num_cpus=actor_cpus, num_gpus=actor_gpus or None)
    bar = _bar(len(items), cfg.backbone) if progress else None
    pending, since = [], time.perf_counter()
    try:
        for batch in done.iter_batches(batch_size=None, batch_format="numpy"):
            pending.append(batch)
            if bar is not None:
                bar.update(len(batch["id"]))
            if sum(len(b["id"]) for b in pending) >= SHARD_ROWS:
                _write_shard(store, pending, time.perf_counter() - since)
                pending, since = [], time.perf_counter()
        if pending:
            _write_shard(store, pending, time.perf_counter() - since)
    finally:
        if bar is not None:
            bar.close()
    return time.perf_counter() - start


def _bar(total, backbone):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"extract {backbone} (ray)", unit="img", dynamic_ncols=True, mininterval=0.5)


def _write_shard(store, batches: list, seconds: float):
    ids = np.concatenate([b["id"] for b in batches]).astype(str)
    paths = np.concatenate([b["path"] for b in batches]).astype(str)
    feats = np.concatenate([b["features"] for b in batches])
    reasons = np.concatenate([b["reason"] for b in batches]).astype(str)
    ok = reasons == ""
    rate = len(ids) / seconds if seconds > 0 else float("nan")
    store.add(ids[ok].tolist(), paths[ok].tolist(), feats[ok],
              {i: (p, r) for i, p, r in zip(ids[~ok], paths[~ok], reasons[~ok], strict=True)}, seconds, rate)
