"""Stage 3: official metrics of each task, prediction files, and run reports."""
