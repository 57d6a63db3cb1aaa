"""nest_rt_export: the torch side of nest_rt (installed from the ``export/`` folder).

Reads NEST toolkit directories, rebuilds the upstream encoders in torch as references,
and writes ONNX bundles for the torch-free runtime. Needs the ``export`` extra.
"""
