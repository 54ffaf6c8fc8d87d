//! Porpoise's gRPC contracts, generated from `proto/` by tonic and prost.
//!
//! `WorkerService` is served by workers, `TaskEventService` and `AdminService` by masters.

/// Version 1 of every Porpoise service and message.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("porpoise.v1");
}

/// The largest gRPC message a Porpoise server takes (tonic's default, stated): a spec is at
/// most 1 MiB (`porpoise_core::limits::MAX_SPEC_BYTES`), so an apply always fits.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The encoded descriptors of every Porpoise service and message, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("porpoise_descriptor");

/// gRPC server reflection (`grpc.reflection.v1`) over Porpoise's services and the standard
/// health service, so `grpcurl` lists and calls them without the `.proto` files.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    String,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("cannot build gRPC reflection: {e}"))
}
