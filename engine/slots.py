"""bhyve's PCI slot option, `-s slot[:function],emulation[,options]` (bhyve(8), pci_parse_slot in pci_emul.c): which
device goes where on bus 0. Parsing is pure and happens before a VM is built, so a typo, an unknown emulation, a
taken slot or a missing image is a clear error before anything runs. bhyve also accepts bus:slot:function; bus 0
is the only one here. Slot 0 function 0 is the host bridge's. The emulations: `virtio-blk` (engine/virtio/blk.py)
and `virtio-net` (engine/virtio/net.py, on an in-process switch: SWITCH[,mac=MAC][,listen=|connect=HOST:PORT]).
"""
from .errors import ConfigError
from .pci.host import DEVICES, FUNCTIONS, bdf
from .virtio import blk, net

EMULATIONS = {"virtio-blk": blk.parse_options, "virtio-net": net.parse_options}
RESERVED = {(0, 0): "hostbridge"}


class SlotSpec:
    __slots__ = ("slot", "function", "emulation", "options", "text")

    def __init__(self, slot, function, emulation, options, text):
        self.slot, self.function, self.emulation, self.options, self.text = slot, function, emulation, options, text

    @property
    def name(self):
        return bdf(self.slot, self.function)


def _number(text, what, limit, spec):
    if not text.isdigit() or int(text) >= limit:
        raise ConfigError("-s %s: %s %r is not 0-%d" % (spec, what, text, limit - 1))
    return int(text)


def parse(spec, images=None):
    """One -s argument → SlotSpec; ConfigError says what is wrong with it. `images`, when given, maps a virtio-blk
    image path as written to the host file it means, or refuses it with ConfigError (the web server confines
    images to its disk directory, webhyve/web/devices.py); it is asked before the file is looked at."""
    where, _, rest = spec.partition(",")
    emulation, _, options = rest.partition(",")
    if not where or not emulation:
        raise ConfigError("-s %s: expected slot[:function],emulation[,options]" % spec)
    parts = where.split(":")
    if len(parts) == 3:
        if _number(parts[0], "bus", 256, spec) != 0:
            raise ConfigError("-s %s: bus 0 is the only PCI bus" % spec)
        parts = parts[1:]
    if len(parts) > 2:
        raise ConfigError("-s %s: expected slot[:function] or bus:slot:function" % spec)
    slot = _number(parts[0], "slot", DEVICES, spec)
    function = _number(parts[1], "function", FUNCTIONS, spec) if len(parts) == 2 else 0
    if emulation not in EMULATIONS:
        raise ConfigError("-s %s: unknown emulation %r (known: %s)" % (spec, emulation, ", ".join(EMULATIONS)))
    try:
        if images is not None and emulation == "virtio-blk" and options:
            path, comma, rest = options.partition(",")
            options = images(path) + comma + rest
        EMULATIONS[emulation](options)
    except ConfigError as problem:
        raise ConfigError("-s %s: %s" % (spec, problem)) from None
    return SlotSpec(slot, function, emulation, options, spec)


def parse_all(specs, images=None):
    """Every -s argument, checked together: no two in one place, none on the host bridge's."""
    taken = dict(RESERVED)
    parsed = []
    for spec in specs:
        s = parse(spec, images) if isinstance(spec, str) else spec
        if (s.slot, s.function) in taken:
            raise ConfigError("-s %s: slot %s is already taken by %s" % (s.text, s.name, taken[s.slot, s.function]))
        taken[s.slot, s.function] = s.text
        parsed.append(s)
    return parsed
