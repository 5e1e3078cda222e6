"""The per-vCPU context block shared by the kernels and the Python side (bhyve's struct vmxctx, widened).

One uint64 array per vCPU. Hooks receive its address as user data; every other array a kernel needs is
reached through an address stored here (engine/native.py), so one compiled kernel serves every VM.
Legend: [py] written once by the Python side at setup, [k] written by kernels, [any] by other threads.
"""
import numpy as np

# -- setup [py] -------------------------------------------------------------------------------------
UC = 0              # uc_engine*
FN = 1              # libunicorn function table (native.function_table)
MEM = 2             # host-physical memory base address and size
MEMSIZE = 3
SEGS = 4            # memory segments: rows [gpa, length, hpa]
NSEGS = 5
VMCS = 6            # Vmcs.store
STATS = 7           # stats counters
PARAMS = 8          # tunable values
CPUID = 9           # cpuid rows [leaf, subleaf, eax, ebx, ecx, edx]
NCPUID = 10
MSR = 11            # msr rows [index, kind, value] (this vCPU's copy)
NMSR = 12
PORTS = 13          # uint8[65536]: which side handles a port (PORT_*)
HOSTCB = 14         # address of the userspace exit callback
VCPUID = 15
XTAB = 16           # exec-scan table: pairs [linear page | 1, gpa page | generation]
XMASK = 17          # number of pairs - 1 (a power of two minus one)
CODE = 18           # per guest page: bit 0 scanned-for-exec, bits 1.. write generation
NPAGES = 19
SCRATCH = 20        # 8 uint64 of scratch for register reads/writes
CODE_GEN = 21       # [k] see CODE_PAGE
GUEST_PE = 22       # [k] CR0.PE as read since this entry: 0 not read yet, 1 real mode, 2 protected. Within one
                    #     entry only the guest's MOV CR0 / LMSW change it, and their code hook clears this
HALT_SEQ = 23       # [any] a halted vCPU waiting in the kernel sleeps on this word's low half (a futex); wakers
                    #     bump it (vmx/halt.py)
HALT_IN_KERNEL = 24  # [k] 1 while the vCPU waits for an interrupt in the kernel loop rather than in userspace
LAPIC_STEP_OFFSET = 25  # [k] the APIC register offset of the write LAPIC_STEP exits after: the exit 56 qualification
KICK = 26           # [any] 1: leave the guest at the next translated-block boundary (core/kick.py). Set after the
                    #     reason (REQ, NOTIFY, RESCHED, an IRR bit) is visible; the block hook clears it. [k] 2:
                    #     interrupt-window exiting is armed: leave at the first block where RFLAGS.IF is set
RESCHED = 27        # [any] the host scheduler's tick: the timeslice of a shared host CPU is over (hosttimer.py)
WINDOW_SKIP = 31    # [k] linear address + 1 of a block in an STI/MOV-SS shadow the window check lets run once
BLOCK_STOP = 60     # [k] 1: the block hook stopped this entry (a kick or the interrupt window), not a HLT
LAPIC_ZERO = 30     # [k] a store that reached reserved bytes of the APIC page: offset + 1 | size << 16; they
                    #     read as 0 again from the next access on (io/lapic/access.py)
# -- exit record [k] -------------------------------------------------------------------------------
EXIT = 32           # what a hook asks the loop to do (X_*)
FAULT_GLA = 33
FAULT_GPA = 34
FAULT_QUAL = 35
ERRCODE = 36        # guest #PF error code
VECTOR = 38         # vector reported by the interrupt hook
REQ = 39            # [any] requests from other threads (REQ_*); the vcpu clears them when handled
IO_RIP = 40         # the last I/O exit's RIP and RCX: one exit per REP string instruction
IO_RCX = 41
RIP = 42            # RIP at the last exit / where to enter
POST = 43           # last value written to port 0x80
ENTRIES = 44        # number of VM entries
RING = 45           # [py] exit log: rows [reason, qualification, length, rip] (RING_ROWS of them)
RING_HEAD = 46      # [k] number of exits logged so far (row = head % RING_ROWS)
# -- EPT and the TLB model [py] unless marked -------------------------------------------------------
EPT = 47            # the VM's EPT state (mmu/ept.py S_*)
POOL = 48           # this vCPU's pool of page-table pages [count, pages...]
POOL_SIZE = 49
TLB = 50            # the TLB model of the host CPU this vCPU runs on (mmu/tlb.py)
TLB_SEEN = 51       # [k] that TLB's flush generation when Unicorn's TLB was last flushed
VPID = 52
EPTP = 53
EPTGEN = 54         # the VM's per-host-CPU eptgen array (struct vmx eptgen[MAXCPU])
HOSTCPU = 55        # the host CPU this vCPU runs on
FAULT_STATUS = 56   # [k] why an EPT violation was not handled (mmu/ept.py results)
TLB_LEN = 57        # length of the TLB model's array
VCPU_EPTGEN = 59    # [k] the EPT generation this vCPU last entered with (to count INVEPTs saved)
TIMESLICE = 58      # [any] microseconds per turn when the host CPU is shared (0: run until an exit); the host
                    #     timer's tick ends the turn (RESCHED)
PAUSE_SKIP = 61     # [k] address + 1 of a PAUSE that exited: it runs when the vCPU is back
CODE_PAGE = 62      # [k] the last code page hooks decoded (linear | 1), its host page, and (CODE_GEN, slot 21)
CODE_HPA = 63       #     the EPT + TLB generations it was found under: any invalidation makes it stale
# -- interrupts and the vLAPIC (io/lapic/, vmx/intr.py) --------------------------------------------
APIC_PAGE = 64      # [py] host-physical address of the virtual-APIC page (0 = no local APIC); the TLB fill
                    #      maps guest-physical 0xFEE00000 there
PIR_DESC = 65       # [py] host-physical address of the posted-interrupt descriptor (64 bytes)
INTR = 66           # [py] address of the vCPU's interrupt block (io/lapic/regs.py IB_*: peers, clock, callbacks)
TIMER_DEADLINE = 67  # [k] CLOCK_MONOTONIC ns when the LAPIC timer fires next (0 = stopped)
TIMER_PERIOD = 68   # [k] ns per period (0 = one-shot)
TIMER_START = 69    # [k] ns when the current count began
RUNSTATE = 70       # [k] RUN_*: where a notification must reach the vCPU
EXIT_SEQ = 71       # [k] bumped each time emu_start returns: a notifier sees its kick landed
NOTIFY = 72         # [any] vector of a host interrupt sent to this vCPU (a kick), 0 = none
INTR_WINDOW = 73    # [k] 1: interrupt-window exiting: leave at the first block boundary where the guest can take one;
                    #     2: the same stop for a virtual interrupt (virtual-interrupt delivery), with no exit 7
INJECT = 74         # [k] the vector the loop asks userspace to deliver
PENDING = 75        # [any] NMI / INIT / SIPI requests for userspace (io/lapic/regs.py PEND_*)
LAPIC_FIX = 76      # [k] offset + 1 of a read-only APIC register a guest store overwrote, 0 = none
LAPIC_FIXVAL = 77   # [k] its value, put back at the next access
NMI_WINDOW = 78     # [k] NMI-window exiting: step until NMI blocking ends
LAPIC_STEP = 79     # [k] 1: an APIC write that exits after it (exit 56, trap-like) was applied; the loop records
                    #     the exit once the stepper has completed the instruction (vmx/emulate.py); 2 | vector << 8:
                    #     a virtualized EOI that exits (45); 3: a store after which the entry evaluates (no exit)
# -- reserved ranges, one per subsystem, so each can grow without renumbering the others -------------
# 47-63 EPT and the TLB model (mmu/), 64-79 interrupts and the vLAPIC (io/, vmx/inject.py),
# 80-95 the L1D model and the cycle counter (cpu/l1d.py), 96-111 the debugger (debug/), 112-119 the TSC (cpu/tsc.py),
# 120-127 the MMIO page served in userspace (vmx/mmio.py), 128-139 exceptions and system calls (vmx/faults.py,
# vmx/deliver.py, vmx/syscall.py; 140-143 the bus lock, io/buslock.py), 144-151 APICv (io/lapic/)
# -- the debugger (debug/traps.py) ----------------------------------------------------------------------
DBG_STOP = 96       # [k] why a debug hook stopped the vCPU (traps.STOP_*); the vCPU's thread clears it
DBG_SKIP = 97       # [py] breakpoint address + 1 to run through once (resuming from it); 0 = none
DBG_STEP = 98       # [py, k] single-step (the MTF control): 1 requested, 2 the instruction is under way
DBG_WATCH_HIT = 99  # [k] watchpoint row + 1 that an access touched; the next instruction boundary stops
DBG_WATCHES = 100   # [py] watchpoint rows [host-physical first, end, access kinds]
DBG_NWATCH = 101
DBG_ADDR = 102      # [k] the breakpoint's address, or the host-physical address of the watched access
# -- the TSC (cpu/tsc.py); its offset is the VMCS's TSC_OFFSET, TSC_ADJUST and TSC_DEADLINE are MSR table rows --
TSC_HZ = 112        # [py] the TSC's frequency: the profile's (CPUID.15H), the modeled host's TSC runs at it too
CLOCK_FN = 113      # [py] clock_gettime's address: CLOCK_MONOTONIC is the guest clock (the PIT, the LAPIC timer)
TSC_LAST = 114      # [k] the last TSC this vCPU read (0: none since a write): each read is above it
TSC_TIMESPEC = 115  # [k] 115-116: the timespec clock_gettime fills
L1D = 80            # [py] address of this vCPU's host CPU's L1D model (cpu/l1d.py layout)
L1D_OWNER = 81      # [py] the tag on lines this VM fills (the host's own lines are tagged 0)
CYCLES = 82         # [k] the modeled cycle counter: what guest RDTSC reads when hw.vmm.l1d_sim is on
HOST_TOUCH = 84     # [py] lines every exit touches, uint64 [n, line...]: the vmxctx and the VMCS
SECRET_TOUCH = 85   # [py] the hypervisor's own data every exit touches, same layout (the L1TF demo's secret)
FLUSH_BUF = 86      # [py] host-physical address of the 64 KiB the software flush reads
CPU_FLAGS = 87      # [py] CPUF_* bits of the VM's CPU profile (cpu/l1d.py)
ARCH_CAPS = 88      # [py] the profile's IA32_ARCH_CAPABILITIES
L1D_EXITED = 89     # [k] an exit happened since the last entry: the next entry flushes if enabled
SPEC_PAGE = 90      # [py] transient window only: linear page of the not-present entry | 1
SPEC_HPA = 91       # [py] transient window only: host page with what the L1D gave the transient load
DEVICE_TOUCH = 92   # [py] lines an I/O or MMIO exit touches as well: the VM's device state, same layout
L1D_SEEN = 93       # [k] that L1D's clock + 1 right after this vCPU's exit path last touched it (0: never)
L1D_SEEN_KIND = 94  # [k] what that touch covered: 1 the exit path, 2 with the device state
# -- the MMIO pages served in userspace: the I/O APIC's and the PCI BARs' (vmx/mmio.py) ----------------------------------------
MMIO_PAGE = 120     # [py] host-physical address of this vCPU's window page (0 = none): the stepper's TLB fill maps
                    #      MMIO_GPA's page there, never executable, and every load or store in it is an exit to the device
MMIO_GPA = 121      # [py] the guest-physical page the window stands for (the I/O APIC's 0xFEC00000)
MMIO_CALLBACK = 122  # [py] address of the userspace MMIO callback (the VM's platform dispatches to the device)
MMIO_RANGE = 123    # [py] the first guest-physical page of the PCI memory window (the BARs), served by the window's
MMIO_PAGES = 124    #      pages 1..MMIO_PAGES-1 one for one; MMIO_PAGES counts the window's pages (page 0: MMIO_GPA)
STEPPER = 125       # [py] address of the vCPU's stepper block (vmx/emulate.py): the instance device accesses run on
MMIO_GLA = 126      # [k] the linear address of the device access being emulated (the fill refused it: X_MMIO)
MMIO_STEP = 127     # [k] 1 while the stepper runs the instruction: its TLB fill maps the device pages
# -- exceptions and system calls (vmx/faults.py, vmx/deliver.py, vmx/syscall.py) -------------------------
EV_FROM_CPU = 128   # [k] the interrupt hook's vector is Unicorn's own exception: its error code and whether it is INT n
                    #     are in the CPU context (vmx/cpuctx.py); faults.exception_exit clears it
EV_VECTOR = 129     # [k] the exception exit's event as faults.exception_exit classified it, for userspace when the
EV_KIND = 130       #     kernel leaves its delivery there (vmx/inject.py): vector, interruption type (exits.TYPE_*),
EV_FLAGS = 131      #     EV_HAS_* flags, error code, CR2 for #PF, and the length of the INT n/INT3/INTO that raised it
EV_ERROR = 132
EV_CR2 = 133
EV_LENGTH = 134
DELIVERED_KERNEL = 135  # [k] events the kernel delivered through the guest's IDT (vmx/deliver.py)
DELIVERED_USER = 136    # [py] events userspace delivered (vmx/inject.py): real mode, NMIs, triple faults, L1TF windows
SYSCALLS = 137      # [k] SYSCALL and SYSENTER executed (vmx/syscall.py)
SYSRETS = 138       # [k] SYSRET and SYSEXIT executed by the exec scan's code hook (vmx/syscall.py)
CPU_ENV = 139       # [py] address of the vCPU's live CPUX86State in Unicorn (vmx/cpuctx.py), 0: use saved copies
# -- the bus lock (io/buslock.py) ----------------------------------------------------------------------
LOCKBITS = 140      # [py] address of the vCPU's LOCK map beside its exec-scan table; 0: one vCPU, no bus lock
CFLAGS_NEXT = 141   # [py] address of the instance's cpu->cflags_next_tb: how the next block is translated
ATOMIC_LAST = 142   # [k] block start + 1 the translator's loop last looked up itself (a repeat: QEMU's EXCP_ATOMIC)
ATOMIC_SERIAL = 143  # [k] locked instructions run serially after their host atomic gave up (misaligned, split)
# -- the APICv controls the local APIC follows (io/lapic/apicv.py), as the vCPU's VMCS has them (vmx/controls.py apicv)
APICV = 144         # [py] APICV_* bits; written on the vCPU's thread, read by any thread that raises an interrupt
SIZE = 152
APICV_VID = 1       # virtual-interrupt delivery: requests go into the PIR descriptor (bhyve's vmx_set_intr_ready)
APICV_POSTED = 2    # posted interrupts: a notification is the posted-interrupt vector, no exit (vmx_post_intr)
RING_ROWS = 256

# EXIT values
X_NONE, X_EPT, X_EXEC, X_GUEST_PF, X_EXCEPTION, X_GP, X_USER_STOP, X_POOL = range(8)
X_PAUSE = 9         # (8 was the bus lock's first-run exit, gone: io/buslock.py)
X_MMIO = 10         # an access to a device page: the instruction runs on the stepper (vmx/emulate.py)
# REQ bits
REQ_STOP = 1        # pause/kick: leave the loop at the next check (an external-interrupt exit if running)
REQ_PEEK = 2        # a visit (vcpu.visit): leave the loop for the vCPU's thread to run a read or a change for another
                    # thread, then go back in; an observation, not an event: no VM exit is recorded or counted
# EV_FLAGS bits
EV_HAS_ERROR, EV_HAS_CR2 = 1, 2
# RUNSTATE values: in the host (the vCPU checks its IRR before it enters), in the guest or about to enter
# (kick it), halted (wake it)
RUN_HOST, RUN_GUEST, RUN_HALTED = 0, 1, 2
# PORTS values
PORT_NONE, PORT_USER, PORT_POST = 0, 1, 2


def new():
    return np.zeros(SIZE, np.uint64)


def new_ring():
    return np.zeros(4 * RING_ROWS, np.uint64)
