"""sharq-vllm: SharQ FP4 (sparse backbone + dense residual) quantization for vLLM.

The SharQ math lives in :mod:`sharq_vllm.reference`; vLLM integration in
:mod:`sharq_vllm.vllm_plugin`; kernels behind :mod:`sharq_vllm.ops`.
"""

__version__ = "0.1.0"


def register() -> None:
    """vLLM ``general_plugins`` entry point: registers the ``sharq`` quantization method.

    Imported in every vLLM process (API server, engine core, workers); must stay cheap and
    must not touch CUDA.
    """
    from .vllm_plugin.registration import register_sharq

    register_sharq()
