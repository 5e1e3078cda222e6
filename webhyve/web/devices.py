"""PCI devices from the web: the create form's and POST /vms's `slots`, bhyve's -s arguments parsed by the engine's
own parser (engine/slots.py, the one vmmctl run uses), with two limits a server needs and a local command line
does not:

- a virtio-blk image is a path inside the server's disk directory (DISKS_DIR, `WEBHYVE_DISKS_DIR`; `disks/` in
  the checkout by default): relative, and still inside it once `..` and symbolic links are resolved. Nothing
  outside it is opened, and whether a file outside it exists is never said;
- virtio-net joins an in-process switch; `listen=` and `connect=` (QEMU socket peers) are refused: they would let
  a web request open TCP sockets on the server's host. `vmmctl run` on that host takes them.

A refusal is the CLI's message (`-s SPEC: what is wrong`) as a 400.
"""
import os

from engine.door.tables import ConfigError, parse_slots

from ..sessions.errors import ApiError

SOCKET_OPTIONS = ("listen=", "connect=")


def image_resolver(directory):
    """The `images` hook of the engine's parser: an image path as written → the file inside `directory`."""
    def resolve(path):
        where = "the server's disk directory (WEBHYVE_DISKS_DIR)"
        if "\0" in path:
            raise ConfigError("virtio-blk: an image path has no NUL character")
        if os.path.isabs(path):
            raise ConfigError("virtio-blk: %s is an absolute path: give the image's path inside %s" % (path, where))
        root = os.path.realpath(directory)
        full = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root:
            raise ConfigError("virtio-blk: %s leads outside %s" % (path, where))
        if not os.path.isfile(full):
            raise ConfigError("virtio-blk: no image file %s in %s" % (path, where))
        return full
    return resolve


def parse(slots, directory):
    """The SlotSpecs of `slots` (a list of -s arguments) for Host.create_vm; ApiError 400 naming what is wrong."""
    try:
        specs = parse_slots(slots, images=image_resolver(directory))
    except ConfigError as problem:
        raise ApiError(400, str(problem)) from None
    for spec in specs:
        if spec.emulation == "virtio-net" and any(o.startswith(SOCKET_OPTIONS) for o in spec.options.split(",")):
            raise ApiError(400, "-s %s: listen= and connect= open sockets on the server's host, which the web API "
                                "does not do; attach the NIC to a switch (vmmctl run -s on the host takes them)"
                           % spec.text)
    return specs
