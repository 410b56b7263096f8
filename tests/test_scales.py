import pytest
import torch

from sharq_vllm.scales import e4m3_decode, e4m3_encode, e8m0_decode, e8m0_encode

# Hand-computed E4M3 (1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448; subnormal step 2^-9)
E4M3_KNOWN = [
    (0.0, 0.0),
    (448.0, 448.0),
    (500.0, 448.0),  # saturates (torch's raw conversion would give NaN)
    (1e9, 448.0),
    (1.0, 1.0),
    (17.0, 16.0),  # tie 16 | 18 -> even mantissa (16)
    (19.0, 20.0),  # tie 18 | 20 -> even mantissa (20)
    (2.0**-9, 2.0**-9),  # smallest subnormal
    (2.0**-10, 0.0),  # tie 0 | 2^-9 -> even (0)
    (3 * 2.0**-11, 2.0**-9),  # 1.5 * 2^-10 rounds up to 2^-9
    (2.0**-6, 2.0**-6),  # smallest normal
    (7 * 2.0**-9, 7 * 2.0**-9),  # largest subnormal
]


@pytest.mark.parametrize("value,expected", E4M3_KNOWN)
def test_e4m3_known(value, expected):
    code = e4m3_encode(torch.tensor([value]))
    assert code.dtype == torch.float8_e4m3fn
    assert e4m3_decode(code).item() == expected


def test_e4m3_bit_patterns():
    codes = e4m3_encode(torch.tensor([448.0, 1.0, 2.0**-9]))
    assert codes.view(torch.uint8).tolist() == [0x7E, 0x38, 0x01]


E8M0_KNOWN = [(0, 127, 1.0), (-127, 0, 2.0**-127), (127, 254, 2.0**127), (3, 130, 8.0), (-3, 124, 0.125)]


@pytest.mark.parametrize("exp,code,value", E8M0_KNOWN)
def test_e8m0_known(exp, code, value):
    c = e8m0_encode(torch.tensor([exp]))
    assert c.dtype == torch.uint8 and c.item() == code
    assert e8m0_decode(c).item() == value


def test_e8m0_clamps():
    assert e8m0_encode(torch.tensor([500, -500])).tolist() == [254, 0]
