"""A stand-in accelerator for device tests on a machine without one.

`StandInDevice(device)` is a TorchDispatchMode under which tensors created on `device` (by a
factory's `device=` or by `.to(device)`) are `OnDevice` tensors: they report `device` but hold
a real CPU tensor, and every op on them runs on that CPU tensor — so the pipeline computes real
values (data-dependent checks, `.item()`, `.tolist()` work as they do on a GPU). What a GPU would
refuse is refused here too:

- an op mixing an OnDevice tensor with a CPU tensor of one or more dimensions (CPU scalars are
  allowed, as CUDA allows them; CPU index tensors are allowed as indices, as CUDA allows them),
  raised as CrossDeviceError;
- `.numpy()` (and so `np.asarray`) on an OnDevice tensor, and `data_ptr()` (a C++ kernel);
- random draws with a generator of the wrong device: generators made by `generator_for` claim a
  device, and a draw on the stand-in device needs one that claims it (a draw on the CPU, one
  that does not).

Unlike FakeTensorMode, nothing is symbolic, so whole fit/predict runs are checked, end to end.
Label the stand-in "meta": a PyTorch build without CUDA has device guards for the CPU and meta
only, and autograd, indexing and `.item()` on a tensor that says "cuda" ask for the CUDA one
(the autograd engine aborts the process). The pipeline code cannot tell: it only ever moves
tensors to the device it was given.
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: Ops that CUDA runs with CPU index tensors on a device tensor.
INDEX_OPS = {
    aten.index.Tensor,
    aten.index_put.default,
    aten.index_put_.default,
    aten._index_put_impl_.default,
}
#: Ops whose point is to cross devices.
TRANSFER_OPS = {aten._to_copy.default, aten.copy_.default}


class CrossDeviceError(RuntimeError):
    pass


class OnDevice(torch.Tensor):
    """A CPU tensor (`elem`) that reports another device."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, device: torch.device):
        t = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.shape,
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=device,
            requires_grad=elem.requires_grad,
        )
        t.elem = elem
        return t

    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def is_meta(self) -> bool:  # labelled "meta" (see above), but it holds real values
        return False

    def __repr__(self) -> str:
        return f"OnDevice({self.device}, {self.elem!r})"

    # A GPU tensor converts to Python numbers (synchronising), so this one does too. (The C++
    # conversions would ask the missing CUDA runtime for a device guard.)
    def tolist(self):
        return self.elem.tolist()

    def item(self):
        return self.elem.item()

    def __float__(self):
        return float(self.elem)

    def __int__(self):
        return int(self.elem)

    def __index__(self):
        return self.elem.__index__()

    def __bool__(self):
        return bool(self.elem)

    def numpy(self, *args, **kwargs):
        raise TypeError(
            f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy "
            "the tensor to host memory first."
        )

    def __array__(self, *args, **kwargs):
        return self.numpy()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func}: an OnDevice tensor was used outside its StandInDevice mode")


class StandInDevice(TorchDispatchMode):
    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.ops = 0  # ops that ran on the stand-in device
        self._claims: list[tuple[torch.Generator, torch.device]] = []

    def generator_for(self, device: torch.device | None = None) -> torch.Generator:
        """A CPU generator that claims `device` (the replacement of make_generator)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        generator = torch.Generator()
        self._claims.append((generator, device))
        return generator

    def _claimed_device(self, generator: torch.Generator) -> torch.device:
        """The device a generator claims (an unclaimed one: the CPU). The dispatcher hands
        modes a new Python object for the same generator, so it is recognised by its state
        (the claimed generators are seeded apart)."""
        state = generator.get_state()
        for claimed, device in self._claims:
            if torch.equal(claimed.get_state(), state):
                return device
        return torch.device("cpu")

    def _is_here(self, device) -> bool:
        return device is not None and torch.device(device) == self.device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = pytree.tree_leaves((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        here = [t for t in tensors if isinstance(t, OnDevice)]
        target = kwargs.get("device")
        if target is not None and torch.device(target).type not in ("cpu", self.device.type):
            raise CrossDeviceError(f"{func}: device {target} is neither the CPU nor {self.device}")
        if here and func not in TRANSFER_OPS:
            cpu = [t for t in tensors if not isinstance(t, OnDevice) and t.dim() > 0]
            indices_only = func in INDEX_OPS and isinstance(args[0], OnDevice)
            if cpu and not indices_only:
                shapes = [tuple(t.shape) for t in cpu]
                raise CrossDeviceError(
                    f"{func}: expected all tensors to be on the same device, but found "
                    f"{self.device} and cpu (CPU tensors of shapes {shapes})"
                )
        on_device = self._is_here(target) or (
            bool(here) and target is None and func is not aten.copy_.default
        )
        generator = kwargs.get("generator")
        if generator is not None:
            claimed = self._claimed_device(generator)
            wanted = self.device if on_device else torch.device("cpu")
            if claimed != wanted:
                raise CrossDeviceError(
                    f"{func}: expected a {wanted.type!r} device type for generator but found "
                    f"{claimed.type!r}"
                )
        originals = {id(t.elem): t for t in here}
        args, kwargs = pytree.tree_map_only(OnDevice, lambda t: t.elem, (args, kwargs))
        if self._is_here(target):
            kwargs = {**kwargs, "device": torch.device("cpu")}
        out = func(*args, **kwargs)
        if here or self._is_here(target):
            self.ops += 1

        def back(t):
            if id(t) in originals:  # in-place and out= ops return their (wrapped) argument
                return originals[id(t)]
            return OnDevice(t, self.device) if on_device else t

        return pytree.tree_map_only(torch.Tensor, back, out)


def unwrap(t: torch.Tensor) -> torch.Tensor:
    """The CPU values of an OnDevice tensor (a plain tensor unchanged)."""
    return t.elem if isinstance(t, OnDevice) else t


def is_on(t, device: torch.device) -> bool:
    return isinstance(t, OnDevice) and t.device == torch.device(device)
