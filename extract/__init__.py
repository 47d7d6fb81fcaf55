"""Stage 1: CLIP features of images into a resumable, crash-safe HDF5 feature store."""
