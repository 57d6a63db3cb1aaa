"""Encoding runs that write responses to files: chunked, resumable, shardable, bounded in memory.

One module per idea: model_specs (the ``--model`` grammar), outputs (the files of each requested
model output), inputs (the images, chunks and shards), encode (the run) with chunks (encoding and
writing them), merge (shards assembled into one run).

``encode_run`` is what ``nest-rt encode`` does. The images (see image_files) are split into
chunks of ``chunk_size`` rows; a chunk counts as finished only once its rows are written and
fsync'ed and its index is recorded in ``progress.json`` (replaced atomically). Killing the process
at any moment therefore loses at most the chunk in flight, and running the same command again
resumes with the first unfinished chunk. Chunks sit at fixed positions of the full input list
(shards are runs of whole chunks), so every image is always encoded in the same batch and a
resumed, or a sharded and merged, run gives the same bytes as one uninterrupted run.

Layout of an output directory (readable without nest_rt: numpy, or h5py for --h5)::

    OUT/run.json                        the run record: inputs in row order, models, bundle sha256,
                                        versions, status ('running' or 'complete'), file sha256s
    OUT/progress.json                   finished chunks
    OUT/modality-M/train_dataset-D/model-X/imageset-I/...
                                        each output's responses (float32 .npy, and .h5 with --h5)
                                        and metadata (.npz), named as nest_rt.response_files says

Response files carry a ``.partial`` suffix until the whole run is complete.
"""
from .chunks import ChunkDone, chunk_items, progress_record
from .encode import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_THREADS, encode_run, versions
from .inputs import RunInputs, chunk_ranges, parse_shard
from .merge import merge_runs
from .model_specs import ModelRequest, parse_model_spec
from .outputs import Output, plan_outputs, planned_outputs

__all__ = ["DEFAULT_CHUNK_SIZE", "MAX_CHUNK_SIZE", "MAX_THREADS", "ChunkDone", "ModelRequest", "Output", "RunInputs",
           "chunk_items", "chunk_ranges", "encode_run", "merge_runs", "parse_model_spec", "parse_shard", "plan_outputs",
           "planned_outputs", "progress_record", "versions"]
