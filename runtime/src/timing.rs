//! CUDA-event timing of work enqueued on a stream.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaStream;

use crate::error::{DriverContext, Result};

/// Time, in milliseconds, of the device work `f` enqueues on `stream`.
pub fn time_ms<F>(stream: &CudaStream, f: F) -> Result<f64>
where
    F: FnOnce() -> Result<()>,
{
    let ctx = stream.context();
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .during("creating a timing event")?;
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .during("creating a timing event")?;
    start.record(stream).during("recording a timing event")?;
    f()?;
    end.record(stream).during("recording a timing event")?;
    let ms = start
        .elapsed_ms(&end)
        .during("reading a timing event (a kernel may have faulted)")?;
    Ok(ms as f64)
}
