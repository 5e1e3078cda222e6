"""The modeled host as front ends see it: its VMs by name, the hw.vmm.* tunables, the L1TF demo's secret."""
from .. import migration
from ..cpu import profiles
from ..hypervisor import Hypervisor
from .vm_view import VmView


class Host:
    """Legend: owns one Hypervisor; VmViews are made per call and hold only their VM."""

    def __init__(self, host_mem_mb=2048, ncpu=2, tunables=None):
        self._hv = Hypervisor(host_mem_mb=host_mem_mb, ncpu=ncpu, tunables=tunables)

    # -- VMs --------------------------------------------------------------------------------------------
    def create_vm(self, name, mem_mb=64, cpus=1, profile=profiles.DEFAULT, mem_cap_mb=None, slots=()):
        """`slots`: bhyve's -s arguments, "slot[:function],emulation[,options]" (ConfigError if one is wrong)."""
        return VmView(self._hv.create_vm(name, mem_mb=mem_mb, cpus=cpus, profile=profile, mem_cap_mb=mem_cap_mb,
                                         slots=slots))

    def restore_vm(self, path, name=None, start=True):
        """A VM rebuilt from a snapshot file; SnapshotError if the file is unusable."""
        return VmView(self._hv.restore_vm(path, name=name, start=start))

    def destroy_vm(self, name):
        self._hv.destroy_vm(name)

    def receive_vm(self, sock, key, peer="the source", admit=None, on_progress=None):
        """The target of a live migration on the connected socket `sock` (frames checked with `key`): a VM built,
        filled and restored as the source sends it, paused, returned at the source's commit as an Arrival whose
        `view` is its VmView; `arrival.done()` starts it and confirms, `arrival.abandon(why)` drops it.
        `admit(hello)` may refuse the VM by raising MigrationError. MigrationError when anything fails."""
        arrival = migration.receive_vm(self._hv, migration.Channel(sock, key, peer), admit, on_progress)
        arrival.view = VmView(arrival.vm)
        return arrival

    # -- tunables ---------------------------------------------------------------------------------------
    def tunables(self):
        """Every hw.vmm.* tunable: name, type, value, default, description, boot_only, aliases."""
        return self._hv.tunables.describe()

    def set_tunable(self, name, value):
        """Validate and apply; {name, old, value}. TunableError names what is wrong."""
        tunable, old, new = self._hv.tunables.set(name, value)
        return {"name": tunable.name, "old": old, "value": new}

    def on_tunable_change(self, listener):
        """listener(name, old, new) after every change, on the changing thread."""
        self._hv.tunables.listeners.append(lambda tunable, old, new: listener(tunable.name, old, new))

    # -- the host's own data ---------------------------------------------------------------------------
    def place_secret(self, data):
        """Host data the exit path reads on every exit (the L1TF demonstration's target); its host address."""
        return self._hv.l1d.place_secret(data)
