"""Exception classes of nest_rt.

Each class keeps upstream's name where upstream had one and also subclasses the built-in
exception that upstream's legacy API raised for the same mistake, so both
``except NESTError`` and existing ``except ValueError`` / ``except TypeError`` /
``except FileNotFoundError`` clauses keep working.
"""


class NESTError(Exception):
    """Base class of every error raised on purpose by nest_rt."""


# Current upstream (BERG) renamed its base class; both names are the one class here, so
# ``except BERGError`` and ``except NESTError`` catch the same errors.
BERGError = NESTError


class InvalidParameterError(NESTError, ValueError):
    """An argument has an allowed type but a value outside what is accepted."""


class ValidationError(InvalidParameterError):
    """A selection value is not valid (unknown channel or ROI, bad mask). Upstream's
    ValidationError was not a NESTError (Q10); this one is, and also a ValueError."""


class ParameterTypeError(NESTError, TypeError):
    """An argument has the wrong type (upstream raised TypeError)."""


class ModelNotFoundError(InvalidParameterError):
    """Unknown model id, modality, dataset, model, subject or ROI."""


class NotExportedError(ModelNotFoundError):
    """The model exists in NEST but the bundle does not contain it."""


class StimulusError(NESTError, ValueError):
    """The images have the wrong shape, size or value range."""


class StimulusTypeError(StimulusError, TypeError):
    """The images have the wrong type or dtype."""


class ModelLoadError(NESTError, RuntimeError):
    """A bundle artifact could not be loaded."""


class BundleFileNotFoundError(ModelLoadError, FileNotFoundError):
    """A file that the bundle lists (or the bundle itself) is missing."""


class BundleIntegrityError(ModelLoadError, ValueError):
    """A bundle file does not match its recorded sha256, or cannot be parsed."""


class NonFiniteOutputError(NESTError, FloatingPointError):
    """The model produced NaN or infinite responses (never returned silently)."""


class StimulusFileNotFoundError(StimulusError, FileNotFoundError):
    """An image path does not exist or cannot be read as an image."""


class RunStateError(NESTError, ValueError):
    """An output directory holds a different, unfinished or inconsistent run (or shards that do
    not fit together); nothing is mixed or overwritten."""


class ResourceError(NESTError):
    """Something the call needs is not available: a writable output, an optional package
    (upstream's name for this family)."""


class OutputWriteError(ResourceError, OSError):
    """Response files cannot be written (unwritable folder, disk full); finished chunks are kept."""


class MissingExtraError(ResourceError, ImportError):
    """An optional dependency of the feature asked for is not installed (the message says
    which extra to install)."""


class ResponsesNotFoundError(InvalidParameterError, FileNotFoundError):
    """Requested in silico responses (or their metadata) are not on disk. A ValueError for an
    unknown imageset, as upstream, and a FileNotFoundError for a missing file, as h5py's."""
