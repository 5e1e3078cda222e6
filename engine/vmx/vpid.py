"""VPIDs as bhyve hands them out: vpid_init, vpid_alloc and vpid_free of sys/amd64/vmm/intel/vmx.c.

A VPID tags the TLB's linear and combined mappings (SDM 28.1). bhyve gives every vCPU of every VM its own:
vpid_init makes a unit-number allocator (unr(9)) over [vm_maxcpu + 1, 0xffff]; vmx_vcpu_init takes the lowest
free number from it for each vCPU (alloc_unr) and vmx_vcpu_cleanup gives it back (free_unr) when the VM is
destroyed. VPIDs [1, vm_maxcpu] are the overflow namespace: when the allocator is exhausted, vpid_alloc counts
the failure (sysctl hw.vmm.vmx.vpid_alloc_failed) and returns vcpuid + 1, a VPID that other VMs' vCPUs of the
same index share. That stays correct because combined mappings are also tagged with the EPTP, unique per VM,
only slower: an INVVPID of that VPID drops the other VMs' mappings too. VPID 0 is the host's (and every
vCPU's when the "enable VPID" control is off, which the modeled CPUs all have).
"""
import threading

VPID_MAX = 0xFFFF


class VpidPool:
    """unr(9) over [low, high]: alloc() returns the lowest free number, or -1 when none is left."""

    def __init__(self, low, high=VPID_MAX):
        self.low, self.high = low, high
        self.used = set()
        self.next_free = low                 # no number below it is free
        self.alloc_failed = 0                # hw.vmm.vmx.vpid_alloc_failed
        self.lock = threading.Lock()

    def alloc(self):
        with self.lock:
            n = self.next_free
            while n <= self.high and n in self.used:
                n += 1
            if n > self.high:
                self.next_free = n
                return -1
            self.used.add(n)
            self.next_free = n + 1
            return n

    def free(self, n):
        with self.lock:
            if n not in self.used:
                raise ValueError("VPID %d is not allocated" % n)
            self.used.discard(n)
            self.next_free = min(self.next_free, n)

    def available(self):
        return self.high - self.low + 1 - len(self.used)


def vpid_alloc(pool, vcpuid):
    """vmx.c vpid_alloc: a unique VPID, or vcpuid + 1 (counted as a failure) when the pool is exhausted."""
    x = pool.alloc()
    if x == -1:
        with pool.lock:
            pool.alloc_failed += 1
        return vcpuid + 1
    return x


def vpid_free(pool, vpid, maxcpu):
    """vmx.c vpid_free: VPIDs [0, vm_maxcpu] are not the allocator's and are not given back."""
    if not 0 <= vpid <= VPID_MAX:
        raise ValueError("vpid_free: invalid vpid %d" % vpid)
    if vpid > maxcpu:
        pool.free(vpid)
