"""docwatch: index a legacy LLM pipeline's versioned files into short-id documents.

The reader API lives here: ``DocumentsIndex`` and ``DocumentNotFound``.
"""

__version__ = "0.1.0"

from docwatch.errors import DocumentNotFound  # noqa: E402
from docwatch.reader import DocumentsIndex  # noqa: E402

__all__ = ["DocumentNotFound", "DocumentsIndex", "__version__"]
