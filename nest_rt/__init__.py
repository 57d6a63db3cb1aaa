"""nest_rt: a torch-free onnxruntime runtime for NEST and BERG encoding models."""
from .api import NEST
from .berg import BERG
from .errors import (BERGError, BundleFileNotFoundError, BundleIntegrityError, InvalidParameterError, MissingExtraError,
                     ModelLoadError, ModelNotFoundError, NESTError, NonFiniteOutputError, NotExportedError,
                     OutputWriteError, ParameterTypeError, ResourceError, ResponsesNotFoundError, RunStateError,
                     StimulusError,
                     StimulusFileNotFoundError, StimulusTypeError, ValidationError)

__version__ = "0.1.0"

__all__ = ["NEST", "BERG", "NESTError", "BERGError", "ResourceError", "InvalidParameterError", "ParameterTypeError",
           "ModelNotFoundError",
           "NotExportedError", "StimulusError", "StimulusTypeError", "StimulusFileNotFoundError",
           "ValidationError", "ModelLoadError", "BundleFileNotFoundError", "BundleIntegrityError",
           "NonFiniteOutputError", "ResponsesNotFoundError", "RunStateError", "OutputWriteError",
           "MissingExtraError", "__version__"]
