"""memtouch's checksum in plain Python: what the guest must print for a command line."""
MASK = (1 << 64) - 1


def checksum(pages, pattern="seq", passes=1):
    memory, total, x = {}, 0, 0x9E3779B97F4A7C15
    for p in range(passes):
        for i in range(pages):
            if pattern == "seq":
                idx = i
            elif pattern == "reverse":
                idx = pages - 1 - i
            else:
                x = (x * 6364136223846793005 + 1442695040888963407) & MASK
                idx = (x >> 33) % pages
            addr = idx * 4096 + ((i * 8) & 0xFF8)
            value = (memory.get(addr, 0) + i + p) & MASK
            memory[addr] = value
            total = ((total ^ value) * 0x100000001B3) & MASK
    return total
