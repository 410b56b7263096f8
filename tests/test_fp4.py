import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sharq_vllm.fp4 import E2M1_VALUES, e2m1_decode, e2m1_encode, pack_nibbles, unpack_nibbles

# (input already divided by its scale, expected code) — hand-computed from the E2M1 grid
# 0, .5, 1, 1.5, 2, 3, 4, 6 with ties to the even code and saturation at 6.
KNOWN = [
    (0.0, 0),
    (-0.0, 8),
    (0.1, 0),
    (-0.1, 8),
    (0.25, 0),  # tie 0 | 0.5 -> even code 0
    (0.2500001, 1),
    (0.5, 1),
    (0.74, 1),
    (0.75, 2),  # tie 0.5 | 1 -> code 2
    (1.0, 2),
    (1.25, 2),  # tie 1 | 1.5 -> code 2
    (1.26, 3),
    (1.75, 4),  # tie 1.5 | 2 -> code 4
    (2.5, 4),  # tie 2 | 3 -> code 4
    (2.51, 5),
    (3.0, 5),
    (3.5, 6),  # tie 3 | 4 -> code 6
    (5.0, 6),  # tie 4 | 6 -> code 6
    (5.01, 7),
    (6.0, 7),
    (6.5, 7),  # saturation
    (1e30, 7),
    (-1.5, 8 | 3),
    (-5.0, 8 | 6),
    (-100.0, 8 | 7),
]


@pytest.mark.parametrize("value,code", KNOWN)
def test_e2m1_known_values(value, code):
    assert e2m1_encode(torch.tensor([value])).item() == code


def test_e2m1_decode_table():
    codes = torch.arange(16, dtype=torch.uint8)
    expected = list(E2M1_VALUES) + [-v for v in E2M1_VALUES]
    assert e2m1_decode(codes).tolist() == expected


def test_e2m1_roundtrip_of_grid_values_is_exact():
    grid = torch.tensor(list(E2M1_VALUES) + [-v for v in E2M1_VALUES[1:]])
    assert torch.equal(e2m1_decode(e2m1_encode(grid)), grid)


@given(st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=1, max_size=64))
def test_e2m1_is_nearest(values):
    x = torch.tensor(values, dtype=torch.float32)
    decoded = e2m1_decode(e2m1_encode(x))
    grid = torch.tensor(E2M1_VALUES)
    best = (x.abs().clamp(max=6).unsqueeze(-1) - grid).abs().amin(-1)
    assert torch.all((decoded.abs() - x.abs().clamp(max=6)).abs() <= best + 1e-7)
    assert torch.all((decoded == 0) | (torch.sign(decoded) == torch.sign(x)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_e2m1_encode_accepts_16bit(dtype):
    x = torch.tensor([0.75, -2.5, 7.0], dtype=dtype)
    assert e2m1_encode(x).tolist() == [2, 8 | 4, 7]


def test_pack_known_bytes():
    codes = torch.tensor([[1, 2, 3, 15]], dtype=torch.uint8)
    assert pack_nibbles(codes).tolist() == [[0x21, 0xF3]]


@given(st.integers(1, 5), st.integers(1, 40))
def test_pack_roundtrip(rows, half_k):
    codes = torch.randint(0, 16, (rows, 2 * half_k), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.shape == (rows, half_k)
    assert torch.equal(unpack_nibbles(packed), codes)


def test_pack_rejects_odd():
    with pytest.raises(ValueError, match="even"):
        pack_nibbles(torch.zeros(3, dtype=torch.uint8))
