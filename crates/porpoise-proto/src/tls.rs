//! How Porpoise's nodes reach each other: mutual TLS (rustls) with certificates from one cluster
//! CA, or plain TCP when a daemon is started with `--insecure` (a loopback test cluster).
//!
//! A node's certificate names its role as a DNS name: [`MASTER`] or [`WORKER`] (`porpoise cert
//! node` puts it there, with the node's hosts). A master dials workers expecting a worker's
//! certificate and a worker dials masters expecting a master's, whatever address they dial; a
//! worker takes calls only from a master's certificate, a master takes task events only from a
//! worker's. The CLI, with `--tls-ca`, checks that it talks to a master of the cluster.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The name in a master's certificate.
pub const MASTER: &str = "porpoise-master";
/// The name in a worker's certificate.
pub const WORKER: &str = "porpoise-worker";
/// The name in a certificate that replicas share (made without `--host`): its holder may speak
/// for any host of its role.
pub const SHARED_WORKER: &str = "shared.porpoise-worker";
/// As [`SHARED_WORKER`], for masters.
pub const SHARED_MASTER: &str = "shared.porpoise-master";

/// A node's own certificate and the cluster's CA.
#[derive(Clone)]
pub struct NodeTls {
    ca: Certificate,
    /// `None` for a client that only checks the server (the CLI).
    identity: Option<Identity>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the identity holds a private key
        f.debug_struct("NodeTls").field("has_identity", &self.identity.is_some()).finish_non_exhaustive()
    }
}

/// How a node talks to the others.
#[derive(Clone, Default)]
pub enum Transport {
    /// Mutual TLS.
    Tls(Arc<NodeTls>),
    /// Plain TCP, no authentication of nodes (`--insecure`).
    #[default]
    Insecure,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_tls() { "Transport::Tls" } else { "Transport::Insecure" })
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{what} {}: not a PEM file", path.display()));
    }
    Ok(bytes)
}

impl Transport {
    /// Mutual TLS with the CA certificate at `ca` and this node's certificate and key.
    pub fn tls(ca: &Path, cert: &Path, key: &Path) -> Result<Self, String> {
        let ca = Certificate::from_pem(read("--tls-ca", ca)?);
        let identity = Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?);
        Ok(Self::Tls(Arc::new(NodeTls { ca, identity: Some(identity) })))
    }

    /// TLS that only checks the server against the CA at `ca` (the CLI's).
    pub fn server_checked(ca: &Path) -> Result<Self, String> {
        let ca = Certificate::from_pem(read("--tls-ca", ca)?);
        Ok(Self::Tls(Arc::new(NodeTls { ca, identity: None })))
    }

    /// The transport a daemon's settings ask for: all three TLS files, or `--insecure`.
    pub fn from_settings(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        insecure: bool,
    ) -> Result<Self, String> {
        match (ca, cert, key, insecure) {
            (Some(ca), Some(cert), Some(key), false) => Self::tls(ca, cert, key),
            (None, None, None, true) => Ok(Self::Insecure),
            (None, None, None, false) => {
                Err("nodes talk over mutual TLS: give --tls-ca, --tls-cert and --tls-key (make them with \
                 `porpoise cert`), or --insecure for a loopback test cluster"
                    .into())
            }
            (_, _, _, true) => Err("--insecure excludes --tls-ca, --tls-cert and --tls-key".into()),
            _ => Err("--tls-ca, --tls-cert and --tls-key go together".into()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// An endpoint for the node at `addr` (host:port), which must show a certificate naming
    /// `role` ([`MASTER`] or [`WORKER`]) under TLS.
    pub fn endpoint(&self, addr: &str, role: &str) -> Result<Endpoint, String> {
        let addr = addr.trim_start_matches("http://").trim_start_matches("https://");
        match self {
            Self::Insecure => {
                Endpoint::from_shared(format!("http://{addr}")).map_err(|e| format!("bad address {addr:?}: {e}"))
            }
            Self::Tls(tls) => {
                let endpoint = Endpoint::from_shared(format!("https://{addr}"))
                    .map_err(|e| format!("bad address {addr:?}: {e}"))?;
                let mut config = ClientTlsConfig::new().ca_certificate(tls.ca.clone()).domain_name(role);
                if let Some(identity) = &tls.identity {
                    config = config.identity(identity.clone());
                }
                endpoint.tls_config(config).map_err(|e| format!("cannot set up TLS to {addr}: {e}"))
            }
        }
    }

    /// A server builder: with TLS, clients must show a certificate of the cluster CA, or may
    /// come without one when `client_certificate_optional` (a master's AdminService: the CLI
    /// has none).
    pub fn server(&self, client_certificate_optional: bool) -> Result<Server, String> {
        match self {
            Self::Insecure => Ok(Server::builder()),
            Self::Tls(tls) => {
                let identity = tls.identity.clone().ok_or("a server needs its own certificate")?;
                let config = ServerTlsConfig::new()
                    .identity(identity)
                    .client_ca_root(tls.ca.clone())
                    .client_auth_optional(client_certificate_optional);
                Server::builder().tls_config(config).map_err(|e| format!("cannot set up TLS: {e}"))
            }
        }
    }
}

/// Whether `request`'s peer showed a certificate of the cluster CA (TLS checked the chain) that
/// names `role`. Always `true` on an insecure transport.
pub fn peer_is<T>(transport: &Transport, request: &tonic::Request<T>, role: &str) -> bool {
    if !transport.is_tls() {
        return true;
    }
    let Some(certs) = request.peer_certs() else { return false };
    let Some(leaf) = certs.first() else { return false };
    names(leaf, role)
}

/// Whether `request`'s peer may speak for the worker at `worker_addr` (host:port): its
/// certificate names the worker role and that host — or is a certificate the workers share
/// ([`SHARED_WORKER`]). Always `true` on an insecure transport (the address check still holds).
pub fn peer_speaks_for_worker<T>(transport: &Transport, request: &tonic::Request<T>, worker_addr: &str) -> bool {
    if !transport.is_tls() {
        return true;
    }
    let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) else { return false };
    let host = worker_addr.rsplit_once(':').map_or(worker_addr, |(h, _)| h).trim_matches(['[', ']']);
    names(&leaf, WORKER) && (names(&leaf, host) || names(&leaf, SHARED_WORKER))
}

fn names(cert: &CertificateDer<'_>, role: &str) -> bool {
    let Ok(name) = ServerName::try_from(role) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}
