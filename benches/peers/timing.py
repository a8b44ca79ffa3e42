"""Timing shared by the peer baselines, matching kiln's measurement module
(runtime/src/measure.rs): CUDA events around each run, warm-up first, the median with p20/p80,
and before each timed run an L2 flush that *reads* a buffer of 2x the L2 size.

A read leaves L2 full of clean lines of an unrelated buffer (what the layer before leaves in a
real decode step, and what rotating inputs over more than 2x L2 gives). A memset, what these
scripts used up to run 14, leaves dirty lines that the timed kernel has to write back as its own
reads evict them, which inflates the time of anything that reads less than the L2 size.

After the flush comes a ~50 us spin kernel (`torch.cuda._sleep`): Python enqueues a timed op
(a Triton launch, an SDPA call) in 10-30 us of host time, longer than the flush takes on the
GPU, and without the spin the GPU would sit idle between the start event and the op, and that
gap would be timed (run 15 measured 20-25 us for a 4 MB read that way). kiln's Rust side
enqueues in a few microseconds, inside the flush's own time."""
import torch


def l2_bytes():
    props = torch.cuda.get_device_properties(0)
    return getattr(props, "L2_cache_size", 50 * 2**20)


SPIN_CYCLES = 100_000  # ~50 us at the H200's 1.98 GHz


class L2Flush:
    """Call it to flush by reading; `memset()` is the old, dirty-line flush (kept for comparison).
    Both end with the spin kernel that covers the host's enqueue time of what is timed next."""

    def __init__(self):
        self.buf = torch.zeros(2 * l2_bytes() // 4, dtype=torch.int32, device="cuda")

    def __call__(self):
        self.buf.max()
        torch.cuda._sleep(SPIN_CYCLES)

    def memset(self):
        self.buf.zero_()
        torch.cuda._sleep(SPIN_CYCLES)


def median_us(fn, flush, reps=20, warmup=3):
    """(median, p20, p80) in microseconds of `fn`, with `flush()` before each timed run."""
    for _ in range(warmup):
        fn()
    pairs = []
    for _ in range(reps):
        flush()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        pairs.append((s, e))
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) * 1e3 for s, e in pairs)
    q = lambda f: times[int(round(f * (len(times) - 1)))]
    return q(0.5), q(0.2), q(0.8)
