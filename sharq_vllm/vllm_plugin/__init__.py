"""vLLM integration of SharQ: ``--quantization sharq`` (see docs/PLUGIN.md).

Importing this package does not import vLLM; :func:`register_sharq` and the config /
linear-method modules do.
"""

from ..options import SharQOptionError, SharQOptions

__all__ = ["SharQOptionError", "SharQOptions", "register_sharq"]


def register_sharq() -> None:
    from .registration import register_sharq as _register

    _register()
