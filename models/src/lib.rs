//! kiln-models: the Step-3 and sPI-GeM workloads.
