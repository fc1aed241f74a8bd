"""Mask packing (`tinykg.compress.masks`): every implementation writes the reference's bytes.

The Triton kernels are checked against the same reference in test_backends.py (under the interpreter)."""

import pytest
import torch

from tinykg.compress import masks, pack_codes


def _mask(shape, seed=0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 1001), (4, 5, 6)], ids=str)
def test_numpy_masks_match_reference_bytes(shape):
    mask = _mask(shape, seed=sum(shape))
    bits = masks.pack_mask_numpy(mask)
    assert bits.dtype == torch.uint8 and bits.shape == (-(-mask.numel() // 8),)
    assert torch.equal(bits, masks.pack_mask_ref(mask))
    assert torch.equal(bits, pack_codes(mask.reshape(-1), 1))
    for unpack in (masks.unpack_mask_numpy, masks.unpack_mask_ref):
        restored = unpack(bits, mask.shape)
        assert restored.dtype == torch.bool and restored.shape == mask.shape and torch.equal(restored, mask)


def test_non_contiguous_mask_is_read_in_row_major_order():
    mask = _mask((37, 11), seed=3).t()
    assert not mask.is_contiguous()
    bits = masks.pack_mask(mask)
    assert torch.equal(bits, masks.pack_mask_ref(mask.contiguous()))
    assert torch.equal(masks.unpack_mask(bits, mask.shape), mask)


def test_cpu_masks_use_numpy():
    assert masks._impl(torch.device("cpu")) == (masks.pack_mask_numpy, masks.unpack_mask_numpy)
