"""The pure core: file names and folders, ids, the attempt model, task facts. No I/O."""
