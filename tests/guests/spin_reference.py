"""Plain-Python twin of spin_kernel() in guests/spin.c: the checksum the spin guest prints."""

MASK32 = 0xFFFFFFFF
SPIN_SEED = 0x12345678
DEFAULT_ITERATIONS = 50_000_000


def spin_checksum(iterations: int) -> int:
    """xorshift32 with the iteration index added each round, all in uint32 arithmetic."""
    x = SPIN_SEED
    for i in range(iterations):
        x ^= (x << 13) & MASK32
        x ^= x >> 17
        x ^= (x << 5) & MASK32
        x = (x + i) & MASK32
    return x


def spin_line(iterations: int) -> str:
    """The exact line spin.elf prints on COM1 (followed by CR LF)."""
    return f"spin: iters={iterations} checksum=0x{spin_checksum(iterations):08x}"
