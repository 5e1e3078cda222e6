"""Low-level glue between numba kernels and libunicorn: pointers from addresses, C calls through addresses.

Numba freezes globals at compile time and will not cache a function that calls ctypes objects, so every
kernel reaches memory and libunicorn through addresses passed in as data (probes nb_pointer.py and
nb_callptr.py). One compiled kernel then serves every VM, and `cache=True` keeps the second start fast.
"""
import ctypes
import threading

import numpy as np
from llvmlite import ir
from numba import cfunc, types
from numba.core.extending import intrinsic
from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UcError
from unicorn.unicorn_py3.unicorn import uclib

NUMBA = dict(cache=True, nogil=True)        # the one place compiler options come from
INLINE = dict(inline="always")              # for the small helpers of hot paths: no call between kernels

# The kernels `python -m engine.precompile` compiles side by side, one process per core, before it runs guests:
# name -> a function that compiles (or loads from the cache) that kernel. Filled as modules define them.
AHEAD = {}


class Hook:
    """A Unicorn hook as a numba cfunc, compiled at the first use of its address rather than when its module loads.

    A cfunc compiles when it is created, and the engine's hooks take about 100 s of CPU to compile after a
    change of the engine's sources: at import time that is one core, in every process, before anything else
    runs. Compiled on first use, a process that never makes a vCPU (the CLI's listing, the web server's start)
    pays nothing, and precompile spreads the hooks over the cores (AHEAD). `cache=True` as for every kernel.
    """

    def __init__(self, signature, pyfunc):
        self.signature, self.pyfunc = signature, pyfunc
        self.name = "%s.%s" % (pyfunc.__module__, pyfunc.__name__)
        self._compiled = None
        self._lock = threading.Lock()
        AHEAD[self.name] = self.compile

    def compile(self):
        with self._lock:
            if self._compiled is None:
                self._compiled = cfunc(self.signature, **NUMBA)(self.pyfunc)
            return self._compiled

    @property
    def address(self):
        return self.compile().address

    def __repr__(self):
        return "<hook %s%s>" % (self.name, "" if self._compiled is None else " compiled")


def hook(signature):
    """@hook(signature): the function as a Unicorn hook (a Hook: a cfunc compiled at first use)."""
    return lambda pyfunc: Hook(signature, pyfunc)


def ahead(*signature):
    """@ahead(argument types) over an @njit kernel: precompile compiles it for them beside the hooks (AHEAD)."""
    def register(dispatcher):
        AHEAD["%s.%s" % (dispatcher.py_func.__module__, dispatcher.__name__)] = lambda: dispatcher.compile(signature)
        return dispatcher
    return register


_P8 = ir.IntType(8).as_pointer()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


@intrinsic
def u8_ptr(typingctx, addr):
    """A uint8* from an integer address (turned into an array with numba's carray)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], _P8)
    return types.CPointer(types.uint8)(types.uint64), codegen


@intrinsic
def u32_ptr(typingctx, addr):
    """A uint32* from an integer address."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], _I32.as_pointer())
    return types.CPointer(types.uint32)(types.uint64), codegen


@intrinsic
def u64_ptr(typingctx, addr):
    """A uint64* from an integer address."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], _I64.as_pointer())
    return types.CPointer(types.uint64)(types.uint64), codegen


@intrinsic
def call_emu_start(typingctx, fn, uc, begin, until, timeout, count):
    """uc_emu_start(uc, begin, until, timeout, count) through its address."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_P8, _I64, _I64, _I64, _I64])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], _P8), args[2], args[3], args[4], args[5]])
    sig = types.int32(types.uint64, types.uint64, types.uint64, types.uint64, types.uint64, types.uint64)
    return sig, codegen


@intrinsic
def call_reg(typingctx, fn, uc, regid, value_addr):
    """uc_reg_read / uc_reg_write(uc, regid, &value) through its address."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_P8, _I32, _P8])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        regid = builder.trunc(args[2], _I32)
        return builder.call(f, [builder.inttoptr(args[1], _P8), regid, builder.inttoptr(args[3], _P8)])
    return types.int32(types.uint64, types.uint64, types.int64, types.uint64), codegen


@intrinsic
def call_uc(typingctx, fn, uc):
    """uc_emu_stop(uc) (or any int f(uc_engine*)) through its address."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_P8])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], _P8)])
    return types.int32(types.uint64, types.uint64), codegen


@intrinsic
def call_ctl(typingctx, fn, uc, control):
    """uc_ctl(uc, control) with no further arguments (a variadic call), through its address."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_P8, _I32], var_arg=True)
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], _P8), builder.trunc(args[2], _I32)])
    return types.int32(types.uint64, types.uint64, types.uint64), codegen


@intrinsic
def call_host(typingctx, fn, a, b, c, d):
    """A Python ctypes callback `uint64 f(uint64, uint64, uint64, uint64)`: the exit to userspace."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I64, [_I64, _I64, _I64, _I64])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, list(args[1:]))
    return types.uint64(types.uint64, types.uint64, types.uint64, types.uint64, types.uint64), codegen


HOST_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
                                 ctypes.c_uint64)


def address(obj):
    """The integer address of a ctypes function or callback."""
    return ctypes.cast(obj, ctypes.c_void_p).value


# Slots of the function table every kernel receives (a uint64 array).
FN_EMU_START, FN_EMU_STOP, FN_REG_READ, FN_REG_WRITE, FN_CTL = range(5)
NFN = 5
CTL_TLB_FLUSH = (UC_CTL_IO_WRITE << 30) | UC_CTL_TLB_FLUSH     # uc_ctl's encoding: op, no arguments, control


def function_table():
    return np.array([address(uclib.uc_emu_start), address(uclib.uc_emu_stop),
                     address(uclib.uc_reg_read), address(uclib.uc_reg_write), address(uclib.uc_ctl)], np.uint64)


def hook_add(uc, htype, cfunc_address, user_data, begin=1, end=0, *extra):
    """Register a numba cfunc as a raw libunicorn hook (the binding's hook_add wants Python callables)."""
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), htype, ctypes.c_void_p(cfunc_address),
                            ctypes.c_void_p(user_data), ctypes.c_uint64(begin), ctypes.c_uint64(end), *extra)
    if err:
        raise UcError(err)
    return handle.value


def hook_del(uc, handle):
    err = uclib.uc_hook_del(uc._uch, ctypes.c_size_t(handle))
    if err:
        raise UcError(err)


UC_MODE_16, UC_MODE_64 = 2, 8
_CONTEXT_MODE_OFFSET = 8       # struct uc_context { size_t context_size; uc_mode mode; ... }


def load_real_mode_segment(uc, regid, selector):
    """Load a segment register the real-mode way (base = selector * 16) in a UC_MODE_64 instance.

    A 64-bit instance's reg_write only sets the selector. Writing through a saved context whose mode
    field says 16-bit takes Unicorn's real-mode path (load_seg_16_helper), which sets the base too.
    """
    ctx = uc.context_save()
    mode = ctypes.c_int.from_address(address(ctx.context) + _CONTEXT_MODE_OFFSET)
    assert mode.value == UC_MODE_64, "unexpected uc_context layout"
    value = ctypes.c_uint64(selector & 0xFFFF)
    mode.value = UC_MODE_16
    try:
        err = uclib.uc_context_reg_write(ctx.context, regid, ctypes.byref(value))
    finally:
        mode.value = UC_MODE_64
    if err:
        raise UcError(err)
    uc.context_restore(ctx)
