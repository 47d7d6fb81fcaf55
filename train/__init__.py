"""Stage 2: VL-T5 / VL-BART on cached CLIP features, with parameter-efficient methods."""
