"""The one door between the engine and its front ends (the web app, vmmctl, the demos): Host, VmView, VcpuView.

Reads come back as plain values (dicts, lists, ints, bytes, str): what a vCPU's thread owns is read by that
thread in a visit, all parts of one visit from one moment; what any thread may read (the console ring, the
lifecycle under the VM's lock, counters and EPT entries word by word) is read directly. Changes are
requests the engine carries out where they belong: a vCPU's thread for its registers and controls, the VM
for its lifecycle. No Unicorn handle, Vcpu, kernel array or numpy view of guest memory comes through this
door. docs/engine.md, "Thread rules", has the rules behind it.
"""
from . import tables
from .bhyve_state import CAPABILITIES
from .host import Host
from .vcpu_view import PARTS, VcpuView
from .vm_view import VmView

__all__ = ["Host", "VmView", "VcpuView", "PARTS", "CAPABILITIES", "tables"]
