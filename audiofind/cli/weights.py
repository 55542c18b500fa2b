"""`audiofind weights`: list, download, import and remove checkpoints."""
