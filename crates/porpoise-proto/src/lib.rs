//! Porpoise's gRPC contracts, generated from `proto/` by tonic and prost.
//!
//! `WorkerService` is served by workers, `TaskEventService` and `AdminService` by masters.

/// Mutual TLS between nodes, or plain TCP with `--insecure`.
pub mod tls;

/// Version 1 of every Porpoise service and message.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("porpoise.v1");
}

/// The largest gRPC message a Porpoise server takes (tonic's default, stated): a spec is at
/// most 1 MiB (`porpoise_core::limits::MAX_SPEC_BYTES`), so an apply always fits.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Adds `authorization: Bearer <token>` to every call when a token is set (AdminService's
/// API tokens).
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// A bearer of `token` (none: calls go without one). A token that cannot be a header value
    /// is an error naming the problem.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Self(Some(v)))
                .map_err(|_| "the API token has characters a header cannot carry".to_string()),
        }
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<token>)" } else { "Bearer(none)" })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An AdminService client that sends its API token with every call.
pub type AdminClient = v1::admin_service_client::AdminServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

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
