"""Guest image loaders: Multiboot v1 kernels, Linux (bzImage or vmlinux), boot sectors / raw disks, flat 64-bit images.

`load_image` turns image bytes into a `BootImage` (segments to copy, registers at entry); the engine
does the copying and the vCPU setup. Detection looks for a multiboot header in the first 8 KiB, then for
Linux's setup header ("HdrS" at 0x202: a bzImage also ends its first sector with 0x55AA) or a vmlinux (an
x86-64 ELF with a "Linux" note), then for a boot signature; a flat 64-bit image has no magic and must be asked
for with kind="flat64".
"""
from engine.errors import ImageError
from engine.loaders.bootsector import has_boot_signature, load_bootsector
from engine.loaders.flat import load_flat64
from engine.loaders.image import BootImage, Segment
from engine.loaders.linux import is_bzimage, load_linux
from engine.loaders.multiboot import find_magic, load_multiboot
from engine.loaders.vmlinux import is_vmlinux, load_vmlinux

KINDS = ("multiboot", "linux", "bootsector", "flat64")

__all__ = ["KINDS", "BootImage", "ImageError", "Segment", "detect_kind", "load_image"]


def detect_kind(data, filename):
    """"multiboot", "linux" or "bootsector", from the image's magic numbers; ImageError if it has none."""
    if find_magic(data):
        return "multiboot"
    if is_bzimage(data) or is_vmlinux(data):
        return "linux"
    if has_boot_signature(data):
        return "bootsector"
    raise ImageError(f"{filename}: neither a multiboot header in the first 8 KiB, a Linux setup header (\"HdrS\" at "
                     "0x202), a vmlinux (an x86-64 ELF with a \"Linux\" note) nor a boot signature 0x55AA at offset "
                     "510 was found; --kind flat64 loads a flat 64-bit image")


def load_image(data, filename, mem_size, kind=None, cmdline="", load_addr=None, initrd=None):
    """Describe `data` as a BootImage for a guest of `mem_size` bytes; `kind` None means detect it.
    `initrd` (bytes) is the initial ramdisk of a Linux kernel."""
    kind = detect_kind(data, filename) if kind is None else kind
    if kind not in KINDS:
        raise ImageError(f"{filename}: unknown image kind {kind!r}; use one of {', '.join(KINDS)}")
    if load_addr is not None and kind != "flat64":
        raise ImageError(f"{filename}: a load address applies only to --kind flat64; a {kind} image "
                         "says where it loads")
    if initrd is not None and kind != "linux":
        raise ImageError(f"{filename}: an initrd goes only with a Linux kernel (bzImage or vmlinux); this is a {kind} "
                         "image")
    if kind == "linux":
        if is_vmlinux(data):
            return load_vmlinux(data, filename, mem_size, cmdline, initrd)
        return load_linux(data, filename, mem_size, cmdline, initrd)
    if kind == "multiboot":
        return load_multiboot(data, filename, mem_size, cmdline)
    if kind == "flat64":
        image = load_flat64(data, filename, mem_size, load_addr)
    else:
        image = load_bootsector(data, filename, mem_size)
    if cmdline:
        image.notes.append(f"{kind}: command line {cmdline!r} ignored: only multiboot and Linux kernels receive one")
    return image
