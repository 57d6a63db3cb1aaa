"""The one error the export stage raises for a toolkit or a request it cannot export."""
from __future__ import annotations


class ExportError(ValueError):
    """The toolkit or the request cannot be exported (the CLI prints it and exits 2)."""
