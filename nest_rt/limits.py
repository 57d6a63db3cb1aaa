"""Limits and defaults of an encode run that the command line shows in its help: here, in a module
that imports nothing, so that ``nest-rt encode --help`` does not load numpy."""

DEFAULT_CHUNK_SIZE = 256
# A chunk is the unit that is redone after an interruption; larger than any image list needs.
MAX_CHUNK_SIZE = 1_000_000
# onnxruntime threads per session. Beyond the cores of the largest machines, a typo (--threads 3000
# started 3000 OS threads per graph, for minutes); above this machine's cores only a warning.
MAX_THREADS = 1024
# How long joining a cluster may wait for its address to accept a connection. Ray itself retries an
# address that does not answer for about 12 minutes (20 tries of its GCS client, each ~35 s).
CONNECT_TIMEOUT_S = 10
