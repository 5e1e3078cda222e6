"""Memory virtualization: the guest walk and guest-physical to host-physical translation."""
