#!/usr/bin/env python3
"""extract_vmlinux.py VMLINUZ VMLINUX: the uncompressed kernel (ELF) out of a bzImage, as the kernel's own
scripts/extract-vmlinux does, but from the setup header: the payload at payload_offset (protocol 2.08 on), of
payload_length bytes, in the format its magic names. webhyve boots the result without the decompressor
(engine/loaders/vmlinux.py, docs/linux.md)."""
import bz2
import lzma
import os
import struct
import sys
import zlib

# magic, name, a decompressor of one stream (the kernel's payload ends in 4 bytes of size after it)
FORMATS = ((b"\xfd7zXZ\x00", "xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
           (b"\x1f\x8b", "gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
           (b"BZh", "bzip2", bz2.BZ2Decompressor),
           (b"\x5d\x00\x00", "lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)))


def extract(image):
    if image[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", image, 0x206)[0] < 0x0208:
        raise SystemExit("not a bzImage of boot protocol 2.08 or later (no payload_offset in its setup header)")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = image[start:start + length]
    for magic, name, decompressor in FORMATS:
        if payload.startswith(magic):
            stream = decompressor()
            kernel = stream.decompress(payload)
            if not stream.eof:
                raise SystemExit("the %s payload ends before its stream does: a truncated bzImage" % name)
            if kernel[:4] != b"\x7fELF":
                raise SystemExit("the %s payload is not an ELF file" % name)
            return kernel
    raise SystemExit("payload compressed in a format Python does not read (magic %s): only %s"
                     % (payload[:4].hex(), ", ".join(name for _, name, _ in FORMATS)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1], "rb") as f:
        kernel = extract(f.read())
    with open(sys.argv[2] + ".tmp", "wb") as f:
        f.write(kernel)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    print("linux: %s: the kernel's ELF, %d bytes, from %s" % (sys.argv[2], len(kernel), sys.argv[1]))
