"""``sharq-vllm quantize``'s source: a local folder, or a Hugging Face model id fetched with
``huggingface_hub.snapshot_download`` (safetensors weights, config and tokenizer files only: no
pickled weights are ever downloaded).

The Hub is optional: a model id works when the Hub is reachable, or offline from the Hugging Face
cache (``HF_HUB_OFFLINE=1``, ``HF_HOME``); otherwise the error says which of the two failed and
what to do instead (download it elsewhere, pass the folder).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import CheckpointError

__all__ = ["ALLOW_PATTERNS", "is_model_id", "resolve_source"]

#: what a SharQ quantization reads from a Hub repository (weights as safetensors, configs,
#: tokenizer and chat-template files); never *.bin / *.pt / *.pth (pickle)
ALLOW_PATTERNS = [
    "*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.model", "*.tiktoken",
    "*.txt", "*.jinja",
]
_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_model_id(text: str) -> bool:
    """Whether ``text`` has the shape of a Hub model id (``org/name``)."""
    return bool(_ID_RE.match(text)) and ".." not in text and not text.endswith((".", "-"))


def resolve_source(src: str, *, revision: str | None = None) -> Path:
    """The local folder to quantize from: ``src`` itself when it is a folder, else the snapshot
    of the Hub model ``src`` (downloaded, or from the cache). Raises CheckpointError with a
    message that says what was tried."""
    path = Path(src).expanduser()
    if path.is_dir():
        if revision:
            raise CheckpointError(f"{src}: --revision applies to Hugging Face model ids, not local folders")
        return path
    if path.exists():
        raise CheckpointError(f"{src}: not a folder (expected a checkpoint folder or a Hugging Face model id)")
    if not is_model_id(src) or src.startswith(("/", "./", "../", "~")):
        raise CheckpointError(f"{src}: no such folder (and not a Hugging Face model id like org/name)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(
            f"{src}: no such folder; to fetch it as a Hugging Face model id install huggingface_hub "
            "(pip install huggingface_hub), or download it and pass the folder"
        ) from None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        return Path(snapshot_download(src, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError as e:
        if _offline():
            why = "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache"
        else:
            why = f"the Hub ({endpoint}) could not be reached and it is not in the Hugging Face cache"
        raise CheckpointError(
            f"{src}: no such folder, and cannot fetch it as a Hugging Face model id: {why} "
            f"({_first_line(e)}). Download it where the Hub is reachable "
            f"(hf download {src}) and pass the folder, or point HF_HOME at a cache that has it"
        ) from None
    except GatedRepoError:
        raise CheckpointError(
            f"{src}: the Hub refused access (a gated model): accept its license on the Hub and log in "
            "(hf auth login, or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{src}: no such folder, and no such model on the Hub ({endpoint}; a private model needs "
            "HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{src}: the Hub has no revision {revision!r} of it") from None


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
