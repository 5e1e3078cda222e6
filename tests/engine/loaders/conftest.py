"""Fixtures for the loader tests: tiny i386 kernels assembled and linked with the system's GNU binutils."""
import shutil
import subprocess

import pytest

# A Multiboot v1 kernel: header first in .text, writes 'H' to COM1 and halts; .data and a 12 KiB .bss.
HELLO_KERNEL = """
        .set MAGIC, 0x1BADB002
        .set FLAGS, {flags}
        .text
        .globl _start
        .align 4
{pad}
header: .long MAGIC, FLAGS, -(MAGIC + FLAGS)
_start: mov $0x3f8, %dx
        mov $'H', %al
        out %al, %dx
        hlt
        .data
msg:    .ascii "hello"
        .bss
        .space 0x3000
"""

# The same kernel with the a.out kludge (flags bit 16): the header says where the file goes.
AOUT_KERNEL = """
        .set MAGIC, 0x1BADB002
        .set FLAGS, 0x10003
        .text
        .globl _start
image_start:
        .align 4
header: .long MAGIC, FLAGS, -(MAGIC + FLAGS)
        .long header, image_start, image_end, bss_end, _start
_start: mov $0x3f8, %dx
        mov $'A', %al
        out %al, %dx
        hlt
        .data
msg:    .ascii "aout"
image_end:
        .bss
bss:    .space 0x2000
bss_end:
"""


@pytest.fixture
def build(tmp_path):
    """build(source, text=0x100000, data=None, flat=False) -> the linked kernel's bytes (ELF32, or flat binary)."""
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("GNU as/ld not installed")

    def _build(source, text=0x100000, data=None, flat=False):
        src, obj, out = tmp_path / "k.s", tmp_path / "k.o", tmp_path / "k.out"
        src.write_text(source)
        subprocess.run(["as", "--32", "-o", obj, src], check=True)
        # -N: one file, no page alignment and no segment holding the ELF headers below 1 MiB.
        args = ["ld", "-m", "elf_i386", "-N", "--no-warn-rwx-segments", f"-Ttext={text:#x}", "-e", "_start"]
        if data is not None:
            args.append(f"-Tdata={data:#x}")
        if flat:
            args.append("--oformat=binary")
        subprocess.run(args + ["-o", out, obj], check=True)
        return out.read_bytes()
    return _build


@pytest.fixture
def hello(build):
    """hello(flags=0x3, pad=0, text=0x100000, data=None): the hello kernel, `pad` bytes of code before its header."""
    def _hello(flags=0x3, pad=0, text=0x100000, data=None):
        return build(HELLO_KERNEL.format(flags=flags, pad=f"        .space {pad}" if pad else ""), text, data)
    return _hello


@pytest.fixture
def hello_kernel(hello):
    """The hello kernel at 1 MiB with its data at 1 MiB + 64 KiB: two PT_LOAD segments."""
    return hello(data=0x110000)


@pytest.fixture
def aout_kernel(build):
    """aout_kernel(flat=True): the a.out-kludge kernel as a flat binary (or, flat=False, as an ELF)."""
    return lambda flat=True: build(AOUT_KERNEL, flat=flat)
