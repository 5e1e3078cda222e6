"""The "kernel" half (vmm.ko's vmx): VMCS, exit reasons, the vcpu loop, its hooks and event delivery."""
