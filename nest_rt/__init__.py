"""nest_rt: a torch-free onnxruntime runtime for NEST and BERG encoding models."""
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from .api import NEST
    from .berg import BERG


def __getattr__(name: str):
    """NEST and BERG, imported when first used: they load numpy and the models' code, which the
    command line's --help (and a verb that does not need them) must not wait for."""
    if name == "NEST":
        from .api import NEST
        return NEST
    if name == "BERG":
        from .berg import BERG
        return BERG
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
