"""nest_rt: a torch-free onnxruntime runtime for NEST encoding models."""
from .api import NEST
from .errors import (BundleFileNotFoundError, BundleIntegrityError, InvalidParameterError, MissingExtraError,
                     ModelLoadError, ModelNotFoundError, NESTError, NonFiniteOutputError, NotExportedError,
                     OutputWriteError, ParameterTypeError, ResponsesNotFoundError, RunStateError, StimulusError,
                     StimulusFileNotFoundError, StimulusTypeError, ValidationError)

__version__ = "0.1.0"

__all__ = ["NEST", "NESTError", "InvalidParameterError", "ParameterTypeError", "ModelNotFoundError",
           "NotExportedError", "StimulusError", "StimulusTypeError", "StimulusFileNotFoundError",
           "ValidationError", "ModelLoadError", "BundleFileNotFoundError", "BundleIntegrityError",
           "NonFiniteOutputError", "ResponsesNotFoundError", "RunStateError", "OutputWriteError",
           "MissingExtraError", "__version__"]
