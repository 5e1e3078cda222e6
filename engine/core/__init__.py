"""What every layer of a vCPU's kernels shares, below them all: the context block and VMCS layouts, register
access, atomics and the host clock, and the kick that makes a vCPU leave the guest."""
