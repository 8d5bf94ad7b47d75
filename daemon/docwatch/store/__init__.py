"""Where documents live: the index, the document directories, locks, the fault seam."""
