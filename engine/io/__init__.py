"""In-"kernel" interrupt controllers and timers: the local APIC, the 8259 pair, the 8254 and the I/O APIC."""
