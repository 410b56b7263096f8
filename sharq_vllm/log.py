"""One logger for the package's own lines (load log, kernel warnings).

Inside a vLLM process vLLM configures its own ``vllm`` logger and may not print the root
logger's records, so lines go through ``vllm.logger.init_logger("vllm.sharq")`` once vLLM is
imported; elsewhere (tools, tests) through the standard ``sharq_vllm`` logger.
"""

from __future__ import annotations

import logging
import sys

_fallback = logging.getLogger("sharq_vllm")


def logger() -> logging.Logger:
    if "vllm" in sys.modules:
        try:
            from vllm.logger import init_logger

            return init_logger("vllm.sharq")
        except Exception:  # a partial or broken vLLM install: still log somewhere
            pass
    return _fallback


def info(msg: str, *args: object) -> None:
    logger().info(msg, *args, stacklevel=2)  # the record names the caller's file and line


def warning(msg: str, *args: object) -> None:
    logger().warning(msg, *args, stacklevel=2)
