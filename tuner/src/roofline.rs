//! Ceilings measured on this project's H200 (see BENCHMARKS.md); a figure's
//! "% of roofline" is the floor time (the larger of compute and memory
//! time at these rates) over the measured time.

/// Device-memory bandwidth of a large device-to-device copy, bytes/s
/// (bytes read + bytes written).
pub const HBM_BYTES_PER_S: f64 = 4.2e12;
/// Dense BF16 tensor-core rate on random data, FLOP/s.
pub const BF16_FLOPS: f64 = 790e12;
/// Dense FP8 tensor-core rate, FLOP/s.
pub const FP8_FLOPS: f64 = 1270e12;

/// Floor time in microseconds.
pub fn floor_us(flops: f64, bytes: f64, peak_flops: f64) -> f64 {
    (flops / peak_flops).max(bytes / HBM_BYTES_PER_S) * 1e6
}

/// Percent of the roofline reached by a measured time.
pub fn pct_of_roofline(flops: f64, bytes: f64, peak_flops: f64, measured_us: f64) -> f64 {
    100.0 * floor_us(flops, bytes, peak_flops) / measured_us
}

/// The fp32 FMA issue rate at the H200's 1980 MHz boost clock (132 SMs x 128 lanes x 2 FLOP),
/// FLOP/s: a datasheet figure, not a measured ceiling. The PINN families' floor; their tf32x3
/// configs run on the tensor cores and can pass it.
pub const FP32_FLOPS: f64 = 66.9e12;
