"""The Dagster side: the reader resource, and the run records the daemon reads.

``from docwatch.dagster import DocumentsIndex`` imports Dagster (the pipeline's venv); the
daemon's own modules here (``runrecords``, ``runfacts``, ``matching``) never do, so this
package imports the resource only when it is asked for.
"""

__all__ = ["DocumentNotFound", "DocumentsIndex"]


def __getattr__(name: str):
    if name in __all__:
        from docwatch.dagster import documents_index

        return getattr(documents_index, name)
    raise AttributeError(f"module 'docwatch.dagster' has no attribute {name!r}")
