"""`triton_kernels._FastLaunch`: the direct-launch cache in front of Triton's ``JITFunction.run``.

Compiled kernels need a GPU, so the protocol is checked here against stand-ins that record what they are
called with (the GPU check, ``benchmarks/gpu_check.py``, compares real launches with the reference); the
specialization key is checked against Triton's own specializer.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tinykg.compress import triton_kernels
from tinykg.compress.triton_kernels import _FastLaunch, _spec_key

pytestmark = pytest.mark.skipif(not triton_kernels.triton_installed(),
                                reason="triton is not installed (pip install triton)")


class _Param:
    def __init__(self, name: str):
        self.name = name


class _Compiled:
    """A compiled kernel's launcher attributes; ``run`` records each direct launch."""

    def __init__(self):
        self.function, self.packed_metadata = object(), object()
        self.direct: list[tuple] = []

    def run(self, *args):
        self.direct.append(args)


class _Jit:
    """A JITFunction with signature (x_ptr, n, key, BLOCK, FLAG): ``jit[grid](...)`` records the launch and
    returns the compiled kernel, as Triton's does."""

    def __init__(self, compiled=None):
        self.params = [_Param(n) for n in ("x_ptr", "n", "key", "BLOCK", "FLAG")]
        self.compiled = compiled or _Compiled()
        self.slow: list[tuple] = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.slow.append((grid, args, kwargs))
            return self.compiled

        return run


class _Hooks:
    def __init__(self, calls=()):
        self.calls = list(calls)


class _Runtime:
    def __init__(self, hooked: bool = False):
        self.launch_enter_hook = _Hooks([print] if hooked else [])
        self.launch_exit_hook = None


class _Active:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 1234


class _Driver:
    active = _Active()


def _launcher(jit, hooked: bool = False) -> _FastLaunch:
    fast = _FastLaunch(jit)
    fast.driver, fast.runtime = _Driver(), _Runtime(hooked)
    return fast


def test_second_launch_calls_the_compiled_kernel_with_arguments_in_signature_order():
    jit = _Jit()
    fast = _launcher(jit)
    x = torch.zeros(64)
    fast[(3,)](x, 5, 7, BLOCK=128, FLAG=True, num_warps=4)
    assert len(jit.slow) == 1 and not jit.compiled.direct
    fast[(9,)](x, 21, 11, BLOCK=128, FLAG=True, num_warps=4)  # same widths and divisibility: a hit
    assert len(jit.slow) == 1
    (call,) = jit.compiled.direct
    assert call[:9] == (9, 1, 1, 1234, jit.compiled.function, jit.compiled.packed_metadata, None, None, None)
    assert call[9] is x and call[10:] == (21, 11, 128, True)  # constexprs after the runtime arguments


@pytest.mark.parametrize("change", ["alignment", "dtype", "int_divisible", "int_one", "int_width", "constexpr",
                                    "option"])
def test_a_different_specialization_goes_through_triton(change):
    jit = _Jit()
    fast = _launcher(jit)
    x = torch.zeros(64)
    base = dict(x=x, n=5, BLOCK=128, num_warps=4)
    fast[(1,)](base["x"], base["n"], 7, BLOCK=base["BLOCK"], FLAG=False, num_warps=base["num_warps"])
    other = dict(base)
    other.update({
        "alignment": {"x": x[1:]},
        "dtype": {"x": torch.zeros(64, dtype=torch.float16)},
        "int_divisible": {"n": 32},
        "int_one": {"n": 1},
        "int_width": {"n": 2**31 + 5},
        "constexpr": {"BLOCK": 256},
        "option": {"num_warps": 8},
    }[change])
    fast[(1,)](other["x"], other["n"], 7, BLOCK=other["BLOCK"], FLAG=False, num_warps=other["num_warps"])
    assert len(jit.slow) == 2 and not jit.compiled.direct


def test_hooks_and_unknown_kernels_take_triton_path():
    x = torch.zeros(64)
    jit = _Jit()
    hooked = _launcher(jit, hooked=True)
    for _ in range(3):
        hooked[(1,)](x, 5, 7, BLOCK=128, FLAG=False)
    assert len(jit.slow) == 3 and not jit.compiled.direct

    jit = _Jit()
    jit.pre_run_hooks = []
    fast = _launcher(jit)
    fast[(1,)](x, 5, 7, BLOCK=128, FLAG=False)
    jit.pre_run_hooks.append(print)  # added after the first launch: seen, since the list is Triton's own
    fast[(1,)](x, 5, 7, BLOCK=128, FLAG=False)
    assert len(jit.slow) == 2 and not jit.compiled.direct

    bare = _Jit(compiled=object())  # no run / function / packed_metadata: another Triton's kernel
    fast = _launcher(bare)
    for _ in range(3):
        fast[(1,)](x, 5, 7, BLOCK=128, FLAG=False)
    assert len(bare.slow) == 3

    jit = _Jit()
    fast = _launcher(jit)
    for _ in range(2):  # FLAG left to a default: the tail cannot be rebuilt, so never direct
        fast[(1,)](x, 5, 7, BLOCK=128)
    assert len(jit.slow) == 2 and not jit.compiled.direct


def test_keys_beyond_the_bound_are_not_kept(monkeypatch):
    monkeypatch.setattr(triton_kernels, "_MAX_KEYS", 2)
    jit = _Jit()
    fast = _launcher(jit)
    x = torch.zeros(64)
    for block in (64, 128, 256, 256, 256):  # three keys; the third is never kept, so never direct
        fast[(1,)](x, 5, 7, BLOCK=block, FLAG=False)
    assert len(fast.compiled) == 2 and len(jit.slow) == 5 and not jit.compiled.direct
    fast[(1,)](x, 5, 7, BLOCK=64, FLAG=False)  # a kept key still launches directly
    assert len(jit.compiled.direct) == 1


def test_spec_key_is_at_least_as_fine_as_tritons_specialization():
    """Two arguments with equal keys must get the same specialization from Triton (else a hit could run a
    kernel compiled for, say, an aligned pointer on an unaligned one)."""
    native = pytest.importorskip("triton._C.libtriton").native_specialize_impl
    from triton.backends.compiler import BaseBackend

    base = torch.zeros(64, dtype=torch.uint8)
    values = [0, 1, 2, 15, 16, 17, 32, -1, -16, -17, 2**31 - 1, 2**31, 2**31 + 16, 2**32, 2**63 - 1, 2**63,
              2**63 + 16, 0.5, 1.0, True, False,
              base, base[1:], base[16:], torch.zeros(8), torch.zeros(8)[1:], torch.zeros(8, dtype=torch.int16)]
    for a, b in itertools.product(values, repeat=2):
        if _spec_key(a) == _spec_key(b):
            assert native(BaseBackend, a, False, True, True) == native(BaseBackend, b, False, True, True), (a, b)
