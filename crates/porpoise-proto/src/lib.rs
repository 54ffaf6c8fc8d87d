//! Porpoise's gRPC contracts, generated from `proto/` by tonic and prost.
//!
//! `WorkerService` is served by workers, `TaskEventService` and `AdminService` by masters.

/// Version 1 of every Porpoise service and message.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("porpoise.v1");
}
