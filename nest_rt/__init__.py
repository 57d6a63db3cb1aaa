"""nest_rt: a torch-free onnxruntime runtime for NEST encoding models."""
from .api import NEST
from .errors import (BundleFileNotFoundError, BundleIntegrityError, InvalidParameterError,
                     MissingDependencyError, ModelLoadError, ModelNotFoundError, NESTError,
                     NonFiniteOutputError, NotExportedError, ParameterTypeError, ResponsesNotFoundError,
                     StimulusError, StimulusFileNotFoundError, StimulusTypeError, ValidationError)

__version__ = "0.1.0"

__all__ = ["NEST", "NESTError", "InvalidParameterError", "ParameterTypeError", "ModelNotFoundError",
           "NotExportedError", "StimulusError", "StimulusTypeError", "StimulusFileNotFoundError", "ValidationError", "ModelLoadError",
           "BundleFileNotFoundError", "BundleIntegrityError", "NonFiniteOutputError", "ResponsesNotFoundError",
           "MissingDependencyError", "__version__"]
