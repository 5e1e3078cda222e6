"""Virtual networks: an in-process learning Ethernet switch (switch.py) and a port speaking QEMU's -netdev socket
stream protocol (qemu_socket.py); virtio-net (engine/virtio/net.py) plugs a VM into a switch."""
