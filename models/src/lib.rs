//! kiln-models: the workloads kiln serves. `step3` holds the Step-3 model
//! configuration and the problem lists (tuning presets) its decode plan needs.

pub mod step3;
