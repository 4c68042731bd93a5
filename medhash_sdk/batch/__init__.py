"""Bulk encoding: many image files -> resumable shards of codes -> one index.

    from medhash_sdk.batch import encode_to_shards, build_index
    summary = encode_to_shards(["/data/cxr"], "out/", model="model.onnx")
    build_index(["out/"], "codes.idx")

shards (the shard folder format: manifest, resume, sources table), job (discovering the
inputs, the job on its folder, encoding the shards left) and index_build (shards -> index).
"""
from .index_build import build_index
from .job import DEFAULT_SHARD_SIZE, EncodeSummary, Job, encode_shards, encode_to_shards, open_encoder, open_job
from .shards import ERRORS, MANIFEST, ShardDir, ShardDirError, read_sources, sources_path

__all__ = ["DEFAULT_SHARD_SIZE", "ERRORS", "MANIFEST", "EncodeSummary", "Job", "ShardDir", "ShardDirError",
           "build_index", "encode_shards", "encode_to_shards", "open_encoder", "open_job", "read_sources",
           "sources_path"]
