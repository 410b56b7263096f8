"""The usage note ``sharq-vllm quantize`` adds to a checkpoint's README.md: how to load the folder
with vLLM and with transformers (which needs ``import sharq_vllm.hf``)."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..options import SharQOptions

__all__ = ["MARKER", "add_usage_note", "usage_note"]

MARKER = "<!-- sharq-vllm usage note -->"


def usage_note(options: SharQOptions) -> str:
    return f"""{MARKER}
## SharQ checkpoint

Written by `sharq-vllm quantize` (sharq-vllm {__version__}): the decoder linears hold SharQ FP4
weight payloads (`weight_packed`, `weight_scale`, `weight_tensor_scale`; options
`{options.summary()}`); everything else is 16-bit.

* **vLLM** (with `sharq-vllm` installed, which registers the plugin): `vllm serve DIR`, no
  `--quantization` flag; weights are used as stored, activations are SharQ's.
* **transformers**: import `sharq_vllm.hf` first, then load as usual; every quantized linear's
  weight is SharQ's reference dequantization of its payload (activations are not quantized):

  ```python
  import sharq_vllm.hf  # registers quant_method "sharq" with transformers
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(DIR, dtype="float32")
  ```

  **Without that import transformers does not know `quant_method: sharq`**: it logs "Unknown
  quantization type, got sharq ... we will skip the quantization" and leaves every quantized
  linear layer randomly initialised, without raising.
"""


def add_usage_note(folder: Path, options: SharQOptions) -> None:
    """Append the note to ``folder/README.md`` (the source's model card, copied), replacing a
    note an earlier run left; create the file when there is none."""
    path = folder / "README.md"
    text = path.read_text(errors="replace") if path.is_file() else ""
    text = text.split(MARKER)[0].rstrip()
    path.write_text((text + "\n\n" if text else "") + usage_note(options))
