"""`make -C guests` builds every bundled guest, and each has the shape its loader expects."""
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.guests.spin_reference import spin_checksum, spin_line

GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"
BUILD_DIR = GUESTS_DIR / "build"
MULTIBOOT_KERNELS = ["hello.elf", "shell.elf", "spin.elf", "longmode.elf", "memtouch.elf", "debugme.elf", "l1tf.elf",
                     "timer.elf", "smp.elf", "ipi.elf", "kickstress.elf", "ioapic.elf"]
ALL_OUTPUTS = MULTIBOOT_KERNELS + ["flat64.bin", "readers.bin", "bootsec.img", "firsttouch.bin"]

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH_BYTES = 8192
MB_FLAG_MEMORY_INFO = 1 << 1
MB_FLAG_AOUT_KLUDGE = 1 << 16
EM_386 = 3
SECTOR = 512


@pytest.fixture(scope="module")
def build():
    """Build every guest once for this module; skip if there is no toolchain."""
    if not all(shutil.which(tool) for tool in ("make", "gcc", "ld", "objcopy")):
        pytest.skip("make, gcc, ld and objcopy are needed to build the guests")
    subprocess.run(["make", "-C", str(GUESTS_DIR)], check=True, capture_output=True)
    return BUILD_DIR


def multiboot_header(image: bytes):
    """Return (offset, magic, flags, checksum) of the first 4-byte-aligned header, or None."""
    for offset in range(0, min(len(image), MULTIBOOT_SEARCH_BYTES) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", image, offset)
        if magic == MULTIBOOT_MAGIC:
            return offset, magic, flags, checksum
    return None


def spin_symbols(build):
    out = subprocess.run(["nm", str(build / "spin.elf")], check=True,
                         capture_output=True, text=True).stdout
    return {parts[2]: (parts[1], int(parts[0], 16))
            for parts in map(str.split, out.splitlines()) if len(parts) == 3}


def test_make_builds_all_outputs(build):
    for name in ALL_OUTPUTS:
        assert (build / name).stat().st_size > 0, name


@pytest.mark.parametrize("name", MULTIBOOT_KERNELS)
def test_kernel_is_elf32_i386(build, name):
    image = (build / name).read_bytes()
    assert image[:4] == b"\x7fELF"
    assert image[4] == 1, "ELFCLASS32"
    assert image[5] == 1, "little endian"
    (machine,) = struct.unpack_from("<H", image, 18)
    assert machine == EM_386


@pytest.mark.parametrize("name", MULTIBOOT_KERNELS)
def test_kernel_has_valid_multiboot_header(build, name):
    header = multiboot_header((build / name).read_bytes())
    assert header is not None, f"multiboot header not found in the first 8 KiB of {name}"
    _, magic, flags, checksum = header
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert flags & MB_FLAG_MEMORY_INFO
    assert not flags & MB_FLAG_AOUT_KLUDGE, "ELF kernels must not use the a.out fields"


@pytest.mark.parametrize("name", MULTIBOOT_KERNELS)
def test_kernel_loads_at_one_mib_with_code_apart_from_data(build, name):
    out = subprocess.run(["readelf", "-lW", str(build / name)], check=True,
                         capture_output=True, text=True).stdout
    # LOAD offset vaddr paddr filesz memsz flags... align; the flags are "R E" or "RW".
    loads = [(int(f[3], 16), "".join(f[6:-1]))
             for f in map(str.split, out.splitlines()) if f and f[0] == "LOAD"]
    code = [paddr for paddr, flags in loads if "E" in flags]
    data = [(paddr, flags) for paddr, flags in loads if "W" in flags]
    assert code[0] == 0x100000
    assert data, "the stack lives in a writable segment"
    for paddr, flags in data:
        assert paddr % 4096 == 0, "writable data must start on its own page"
        assert "E" not in flags


def test_bootsector_signature_and_second_sector(build):
    image = (build / "bootsec.img").read_bytes()
    assert len(image) >= 2 * SECTOR and len(image) % SECTOR == 0
    assert image[510:512] == b"\x55\xaa"
    assert image[SECTOR:].split(b"\0")[0] == b"sector 2 says hi"


def test_flat64_is_a_small_raw_blob(build):
    image = (build / "flat64.bin").read_bytes()
    assert not image.startswith(b"\x7fELF")
    assert b"flat64 ok" in image


def test_spin_kernel_is_a_global_function(build):
    kind, address = spin_symbols(build)["spin_kernel"]
    assert kind == "T"
    assert address >= 0x100000


def test_spin_reference_known_values():
    """Values checked against spin.elf under QEMU (iters=1000) and a host C build (default)."""
    assert spin_checksum(0) == 0x12345678
    assert spin_checksum(1000) == 0x29D61631
    assert spin_line(1000) == "spin: iters=1000 checksum=0x29d61631"



@pytest.mark.parametrize("iterations", [0, 1, 7, 1000, 12345])
def test_spin_kernel_matches_reference(build, iterations):
    """The compiled spin_kernel, run bare in Unicorn (no engine), agrees with the Python twin."""
    unicorn = pytest.importorskip("unicorn")
    from unicorn import x86_const as x86

    text = subprocess.run(["objcopy", "-O", "binary", "--only-section=.text",
                           str(build / "spin.elf"), "/dev/stdout"],
                          check=True, capture_output=True).stdout
    _, entry = spin_symbols(build)["spin_kernel"]
    stack_top, return_address = 0x90000, 0xDEAD0000
    cpu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    cpu.mem_map(0x100000, 0x10000)
    cpu.mem_map(0x80000, 0x10000)
    cpu.mem_write(0x100000, text)
    cpu.mem_write(stack_top - 8, struct.pack("<II", return_address, iterations))
    cpu.reg_write(x86.UC_X86_REG_ESP, stack_top - 8)
    cpu.emu_start(entry, return_address)
    assert cpu.reg_read(x86.UC_X86_REG_EAX) == spin_checksum(iterations)
