"""The snapshot container: a zip of stored members, `manifest.json` first and then numpy `.npy` arrays,
written atomically and read without pickle, each member checked against what the caller expects before
its data is read.

Nothing here unpickles: the manifest is JSON, and an array member is parsed by hand from its `.npy` header
(a Python literal numpy reads with ast.literal_eval), refused if its dtype holds Python objects, is not the
expected dtype and shape, or does not have exactly the bytes they imply; the data is then copied into a
fresh buffer. Zip CRCs are checked as each member is read to its end.
"""
import json
import math
import os
import tempfile
import tokenize
import zipfile

import numpy as np
from numpy.lib import format as npy

from .errors import SnapshotError

MANIFEST = "manifest.json"
MANIFEST_MAX = 1 << 20           # bytes: a manifest is a few KiB even with 64 vCPUs
NPY_HEADER_MAX = 1 << 16
ZIP_MAGIC = b"PK\x03\x04"
CHUNK = 1 << 20
_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError)


# -- writing --------------------------------------------------------------------------------------------
def write(path, manifest, arrays):
    """Write `manifest` (a dict) and `arrays` ({name: ndarray}) to `path` atomically: a temporary file in the
    same folder, flushed and fsynced, renamed over `path`, then the folder fsynced. A crash or a full disk
    leaves the previous file or the new one, never half of one; a failed write leaves no temporary file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    except OSError as problem:
        raise SnapshotError("cannot write a snapshot in %s: %s" % (folder, problem.strerror)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            _write_zip(f, manifest, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as problem:
        os.unlink(tmp)
        if isinstance(problem, OSError):
            raise SnapshotError("cannot write snapshot %s: %s (the previous file, if any, is untouched)"
                                % (path, problem.strerror or problem)) from None
        raise
    _fsync_folder(folder)


def write_to(f, manifest, arrays):
    """The same container into an open binary file-like `f` (a migration sends it over its connection)."""
    _write_zip(f, manifest, arrays)


def _write_zip(f, manifest, arrays):
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr(MANIFEST, json.dumps(manifest, allow_nan=False))
        for name, array in arrays.items():
            with z.open(name + ".npy", "w", force_zip64=True) as out:
                npy.write_array(out, np.ascontiguousarray(array), allow_pickle=False)


def _fsync_folder(folder):
    """Make the rename itself durable (the directory entry lives in the folder)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- reading --------------------------------------------------------------------------------------------
class Reader:
    """An open snapshot file: `manifest()` parses the JSON, `arrays(specs)` reads exactly the members named."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except FileNotFoundError:
            raise SnapshotError("no snapshot at %s" % self.path) from None
        except OSError as problem:
            raise SnapshotError("%s cannot be opened: %s" % (self.path, problem.strerror)) from None
        try:
            self._zip = self._open_zip()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()
        self._file.close()

    def refuse(self, problem):
        return SnapshotError("%s %s" % (self.path, problem))

    def _open_zip(self):
        if self._file.read(4) != ZIP_MAGIC:
            raise self.refuse("is not a readable snapshot: not a zip archive (wrong magic at offset 0)")
        self._file.seek(0)
        try:
            z = zipfile.ZipFile(self._file)
        except _READ_ERRORS as problem:
            raise self.refuse("is not a readable snapshot (truncated or damaged): %s" % problem) from None
        names = [info.filename for info in z.infolist()]
        if "header.npy" in names:
            raise self.refuse("is a version 1 snapshot, whose CPU contexts are pickled Python objects; this "
                              "webhyve reads version 3 only and does not unpickle: take the snapshot again")
        if not names or names[0] != MANIFEST:
            raise self.refuse("is not a webhyve snapshot: a zip without %s as its first member" % MANIFEST)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise self.refuse("is damaged or crafted: member %s appears more than once" % ", ".join(twice))
        size = os.fstat(self._file.fileno()).st_size
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
                raise self.refuse("is not a webhyve snapshot: member %s is compressed or encrypted "
                                  "(webhyve stores members as they are)" % info.filename)
            if info.header_offset + info.file_size > size:
                raise self.refuse("is truncated or damaged: member %s claims %d bytes past the file's end"
                                  % (info.filename, info.header_offset + info.file_size - size))
        return z

    def manifest(self):
        """The manifest as a dict (its fields are checked by the caller)."""
        info = self._zip.getinfo(MANIFEST)
        if info.file_size > MANIFEST_MAX:
            raise self.refuse("has a %d-byte manifest; a webhyve manifest is under %d" % (info.file_size, MANIFEST_MAX))
        try:
            text = self._zip.read(info)
        except _READ_ERRORS as problem:
            raise self.refuse("is damaged: %s cannot be read (%s)" % (MANIFEST, problem)) from None
        try:
            manifest = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as problem:
            raise self.refuse("is damaged: %s is not valid JSON (%s)" % (MANIFEST, problem)) from None
        if not isinstance(manifest, dict):
            raise self.refuse("is damaged: %s is not a JSON object" % MANIFEST)
        return manifest

    def arrays(self, specs):
        """{name: array} for `specs` ({name: (dtype, shape)}), which must be exactly the file's array members."""
        names = [info.filename for info in self._zip.infolist()][1:]
        present = {n[:-4] for n in names if n.endswith(".npy")}
        missing = sorted(set(specs) - present)
        if missing:
            raise self.refuse("is incomplete: %s missing" % ", ".join(m + ".npy" for m in missing))
        extra = sorted(n for n in names if n[:-4] not in specs or not n.endswith(".npy"))
        if extra:
            raise self.refuse("holds members a webhyve snapshot does not have: %s" % ", ".join(extra))
        return {name: self._array(name, np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in specs.items()}

    def _array(self, name, dtype, shape):
        member = name + ".npy"
        info = self._zip.getinfo(member)
        try:
            with self._zip.open(info) as f:
                found, fortran, found_dtype = _npy_header(f)
                if found_dtype.hasobject:
                    raise self.refuse("is refused: member %s is an array of Python objects, which only unpickling "
                                      "could read (nothing was unpickled)" % member)
                if found_dtype != dtype:
                    raise self.refuse("is damaged or crafted: member %s holds %s, expected %s"
                                      % (member, _kind(found_dtype), _kind(dtype)))
                if fortran:
                    raise self.refuse("is damaged or crafted: member %s is in Fortran order; webhyve writes C order"
                                      % member)
                if found != shape:
                    raise self.refuse("is damaged or crafted: member %s has shape %s; the manifest says %s"
                                      % (member, found, shape))
                nbytes = math.prod(shape) * dtype.itemsize
                if info.file_size != f.tell() + nbytes:
                    raise self.refuse("is truncated or damaged: member %s has %d bytes of data, its header says %d"
                                      % (member, info.file_size - f.tell(), nbytes))
                data = _read_exactly(f, nbytes)
                if len(data) != nbytes or f.read(1):      # the read to the end checks the CRC
                    raise self.refuse("is truncated or damaged: member %s ends early" % member)
        except SnapshotError:
            raise
        except _READ_ERRORS as problem:
            raise self.refuse("is damaged: member %s cannot be read (%s)" % (member, problem)) from None
        return np.frombuffer(data, dtype).reshape(shape)


def _npy_header(f):
    """(shape, fortran_order, dtype) from a .npy header: a Python literal parsed by ast.literal_eval."""
    version = npy.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError("npy format version %d.%d" % version)
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    try:
        return read(f, max_header_size=NPY_HEADER_MAX)
    except (SyntaxError, TypeError, RecursionError, tokenize.TokenError) as problem:   # a damaged literal
        raise ValueError("its .npy header is not a valid literal (%s)" % problem) from None


def _kind(dtype):
    return "records of %d fields" % len(dtype.names) if dtype.names else dtype.name


def _read_exactly(f, nbytes):
    """Up to `nbytes` into a new writable buffer (the kernels that copy from it want writable arrays)."""
    data = bytearray(nbytes)
    view, done = memoryview(data), 0
    while done < nbytes:
        chunk = f.read(min(CHUNK, nbytes - done))
        if not chunk:
            return data[:done]
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    return data


def _no_constant(name):
    raise ValueError("%s is not a JSON number" % name)
