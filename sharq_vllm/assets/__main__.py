"""``python -m sharq_vllm.assets`` = ``sharq-vllm fetch-model``."""

from . import main

raise SystemExit(main())
