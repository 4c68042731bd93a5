"""Bulk encoding on a Ray cluster (Ray Data, extra ``dist``): the same shards, resume and codes
as a local run (medhash_sdk.batch), spread over many machines.

    from medhash_sdk.distributed import encode_with_ray
    encode_with_ray(["/nfs/cxr"], "/nfs/cxr-codes", model="model.onnx", address="auto")
    # CLI: medhash encode /nfs/cxr --out /nfs/cxr-codes --model model.onnx --ray=auto

How it runs: the driver (this process) discovers the inputs, opens the output directory
(manifest, lock, which shards are left) exactly like a local run, and makes one Ray Data row
per unfinished shard. An actor pool encodes the rows: each actor opens the Encoder once (one
actor per GPU with ``num_gpus=1`` when the cluster has GPUs; one per node otherwise), reads
and decodes its shard's files with the local pipeline (decode workers overlapped with
inference, batches inside the shard: the same codes as a local run) and returns the codes.
The driver writes each finished shard atomically as it arrives, so a killed job resumes
like a local one, with either path.

On a real cluster:
- start it (``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the
  others, or KubeRay / the cluster launcher) with the same Python and medhash-sdk[gpu] or
  medhash-sdk[cpu] installed on every node (or pass runtime_env={"pip": [...]});
- the INPUT paths must be readable under the same names on every node (NFS, a shared mount);
  the output directory only needs to exist on the driver: codes travel back through Ray;
- the model file is sent to the actors by the driver (ray.put), so it need not be shared;
- address: "auto" (run the driver on a cluster node), "ray://HEAD:10001" (Ray Client from
  elsewhere), or None (RAY_ADDRESS if set, else a local instance on this machine).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .batch import DEFAULT_SHARD_SIZE, EncodeSummary, Job, encode_shards, open_job
from .pipeline import DecodePools, GroupResult, counting
from .exceptions import MedhashError, ModelMismatchError
from .inputs import Inputs, Item
from .validation import check_int, check_optional_int

INSTALL_HINT = 'Ray is not installed: `pip install "medhash-sdk[dist]"` (ray[data])'


def import_ray() -> Any:
    """Import ray lazily, with an install hint when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return ray


class _ShardEncoder:
    """A Ray Data actor: opens the Encoder once, then encodes whole shards (one row each)."""

    def __init__(self, model_box: list[Any], suffix: str, fingerprint: str, providers: Any, batch_size: int,
                 workers: int, threads: int, pool: str):
        import ray

        from .encoder import Encoder

        self._dir = tempfile.mkdtemp(prefix="medhash-model-")
        path = os.path.join(self._dir, "model" + suffix)
        with open(path, "wb") as f:
            f.write(ray.get(model_box[0]))
        self.enc = Encoder(path, providers=providers, threads=threads)
        if self.enc.fingerprint != fingerprint:  # pragma: no cover - the bytes came from the driver
            raise ModelMismatchError(f"the actor's model {self.enc.fingerprint[:16]} is not the driver's")
        self.batch_size = batch_size
        self.pools = DecodePools(workers, pool)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        shards, payloads = [], []
        for i, items_json in zip(batch["shard"], batch["items"]):
            items = [Item(x[0], x[1], x[2], tuple(x[3])) for x in json.loads(items_json)]
            for r in encode_shards([(int(i), items)], self.enc, self.pools, batch_size=self.batch_size):
                shards.append(r.key)
                payloads.append(pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL))
        return {"shard": np.asarray(shards, dtype=np.int64), "result": np.asarray(payloads, dtype=object)}

    def __del__(self) -> None:
        try:
            self.pools.close()
            shutil.rmtree(self._dir, ignore_errors=True)
        except Exception:
            pass


def _model_path(model: Any) -> str:
    from .encoder import Encoder, default_model_path

    if isinstance(model, Encoder):
        return model.model_path
    return os.fspath(default_model_path() if model is None else model)


def _ray_init(ray: Any, address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Connect (or start a local instance); True if this call started Ray."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": "warning"}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs.update(include_dashboard=False)   # a local instance, just for this job
    ray.init(address=address, **kwargs)
    return True


def encode_with_ray(inputs: Sequence[str | os.PathLike[str]] | Inputs, out: str | os.PathLike[str], *,
                    model: Any = None, providers: Any = "auto", batch_size: int = 64, workers: int | None = None,
                    shard_size: int = DEFAULT_SHARD_SIZE, pool: str = "auto", address: str | None = None,
                    num_actors: int | None = None, gpus_per_actor: float | None = None,
                    runtime_env: dict[str, Any] | None = None, show_progress_bar: bool | None = None,
                    path_column: str | None = None, id_column: str | None = None,
                    label_columns: Sequence[str] | None = None) -> EncodeSummary:
    """Like medhash_sdk.batch.encode_to_shards, on a Ray cluster (see the module docstring).

    num_actors: encoder actors (default: the cluster's GPUs, else its alive nodes).
    gpus_per_actor: default 1 when the cluster has GPUs, else 0. Each actor reserves its
    node's CPUs per GPU (without GPUs: the smallest node's CPUs) and uses them for ONNX Runtime
    threads and, unless ``workers`` says otherwise, as decode workers. A Ray instance started
    here is shut down at the end; one already connected (ray.init by the caller) is kept.
    """
    from .encoder import Encoder

    ray = import_ray()
    batch_size = check_int("batch_size", batch_size)
    workers = check_optional_int("workers", workers)
    num_actors = check_optional_int("num_actors", num_actors)
    path = _model_path(model)
    from .backends import is_engine_file

    # the driver only reads the model's card (fingerprint, nbits); the actors run it
    probe = model if isinstance(model, Encoder) else Encoder(path, providers="auto" if is_engine_file(path) else "cpu")
    started = _ray_init(ray, address, runtime_env)
    try:
        with open_job(inputs, out, fingerprint=probe.fingerprint, nbits=probe.nbits, shard_size=shard_size,
                      path_column=path_column, id_column=id_column, label_columns=label_columns) as job:
            if job.todo:
                _run(ray, job, path, probe.fingerprint, providers=providers, batch_size=batch_size,
                     workers=workers, pool=pool, num_actors=num_actors, gpus_per_actor=gpus_per_actor,
                     show_progress_bar=show_progress_bar)
            return job.finish()
    finally:
        if started:
            ray.shutdown()


def _plan(ray: Any, gpus_per_actor: float | None, num_actors: int | None) -> tuple[int, float, int]:
    """(actors, GPUs per actor, CPUs per actor) from the cluster's alive nodes.

    With GPUs: one actor per GPU, each with the CPUs its node has per GPU (for decoding).
    Without: one actor per node, each reserving the smallest node's CPUs (decoders + ORT).
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    gpus = sum(float(r.get("GPU", 0)) for r in nodes)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if gpus_per_actor:
        gpu_nodes = [r for r in nodes if float(r.get("GPU", 0)) >= gpus_per_actor]
        if not gpu_nodes:
            raise MedhashError(f"no node of this Ray cluster has {gpus_per_actor} GPU(s) for an actor")
        cpus = max(1, int(min(float(r.get("CPU", 1)) * gpus_per_actor / float(r["GPU"]) for r in gpu_nodes)))
        actors = num_actors or int(sum(float(r["GPU"]) // gpus_per_actor for r in gpu_nodes))
    else:
        cpu_nodes = [r for r in nodes if float(r.get("CPU", 0)) >= 1]
        if not cpu_nodes:
            raise MedhashError("this Ray cluster has no node with a CPU")
        cpus = max(1, int(min(float(r["CPU"]) for r in cpu_nodes)))
        actors = num_actors or len(cpu_nodes)
    return max(1, actors), float(gpus_per_actor), cpus


def _run(ray: Any, job: Job, model_path: str, fingerprint: str, *, providers: Any, batch_size: int,
         workers: int | None, pool: str, num_actors: int | None, gpus_per_actor: float | None,
         show_progress_bar: bool | None) -> None:
    actors, gpus_per_actor, cpus = _plan(ray, gpus_per_actor, num_actors)
    actors = min(actors, len(job.todo))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False   # ours counts images, not blocks
    rows = [{"shard": i, "items": json.dumps([[it.id, it.path, it.kind, list(it.labels)]
                                               for it in job.shard_items(i)])} for i in job.todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    encoded = ds.map_batches(
        _ShardEncoder, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
        num_gpus=gpus_per_actor or None,
        fn_constructor_kwargs=dict(model_box=[ray.put(Path(model_path).read_bytes())],
                                   suffix=Path(model_path).suffix or ".onnx", fingerprint=fingerprint,
                                   providers=providers, batch_size=batch_size, workers=workers or cpus,
                                   threads=cpus, pool=pool))
    bar = job.progress_bar(show_progress_bar)
    count = counting(bar)
    try:
        for row in encoded.iter_rows():
            r: GroupResult = pickle.loads(row["result"])
            job.write(r)
            for _ in range(len(r.items)):
                count(True)
            for _ in r.errors:
                count(False)
    except MedhashError:
        raise
    except Exception as e:
        if type(e).__module__.startswith("ray"):
            raise MedhashError(f"the Ray job failed ({type(e).__name__}: {e}); finished shards are kept: "
                               "run the same command again to resume") from e
        raise
    finally:
        bar.close()
