"""Stage 2: VL-T5 / VL-BART on cached CLIP features, with parameter-efficient methods.

Callable from Python: `vl.train("run.yaml", overrides=["epochs=3"])` trains one run and
returns its folder (vl.train.api.train)."""
from vl.shared.callables import callable_module

callable_module(__name__, "vl.train.api:train")
