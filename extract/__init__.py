"""Stage 1: CLIP features of images and video frames into a resumable, crash-safe HDF5 feature store."""
