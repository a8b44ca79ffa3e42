//! kiln-models: the workloads kiln serves. `step3` holds the Step-3 model configuration and
//! the problem lists (tuning presets) its decode plan needs; `spigem` the PINN target nets of
//! sPI-GeM's basis networks; `presets` names them all.

pub mod presets;
pub mod spigem;
pub mod step3;
