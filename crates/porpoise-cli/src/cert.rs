//! `porpoise cert`: a cluster CA and node certificates (rcgen), for a test or compose cluster.
//! A node's certificate names its role (`porpoise-master` or `porpoise-worker`, what its peers
//! check) and the hosts it is reached at; it serves and dials with the same certificate.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::client::ClientError;
use crate::outln;

const CA_NAME: &str = "Porpoise cluster CA";

/// A node's role, as its certificate names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Master,
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Master => porpoise_proto::tls::MASTER,
            Self::Worker => porpoise_proto::tls::WORKER,
        }
    }

    fn shared_name(self) -> &'static str {
        match self {
            Self::Master => porpoise_proto::tls::SHARED_MASTER,
            Self::Worker => porpoise_proto::tls::SHARED_WORKER,
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::failed(format!("cannot {what}: {e}"))
}

/// From `days` ago (clocks differ) to `years` from now.
fn validity(params: &mut CertificateParams, years: i32) {
    let today = chrono::Utc::now().date_naive();
    let from = today - chrono::Days::new(1);
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(today.year() + years, today.month() as u8, today.day().min(28) as u8);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Writes `content` to a new file `path` (never over an existing one); `secret` files are
/// readable by their owner only.
fn write_new(path: &Path, content: &str, secret: bool) -> Result<(), ClientError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                ClientError::invalid(format!("{} exists already: remove it first", path.display()))
            } else {
                failed(&format!("write {}", path.display()), e)
            }
        })?;
    file.write_all(content.as_bytes()).map_err(|e| failed(&format!("write {}", path.display()), e))
}

/// `porpoise cert ca --dir DIR`: `DIR/ca.pem` and `DIR/ca.key` (ten years).
pub fn ca(dir: &Path) -> Result<(), ClientError> {
    std::fs::create_dir_all(dir).map_err(|e| failed(&format!("create {}", dir.display()), e))?;
    let key = KeyPair::generate().map_err(|e| failed("make a key", e))?;
    let mut params = ca_params();
    validity(&mut params, 10);
    let cert = params.self_signed(&key).map_err(|e| failed("sign the CA certificate", e))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    outln!("{}: the cluster CA (every node gets it as --tls-ca)", cert_path.display())?;
    outln!("{}: its key: keep it off the nodes", key_path.display())?;
    Ok(())
}

/// `porpoise cert node NAME --role ROLE --dir DIR [--host H]...`: `DIR/NAME.pem` and
/// `DIR/NAME.key`, signed by `DIR/ca.pem` and `DIR/ca.key` (two years).
pub fn node(dir: &Path, name: &str, role: Role, hosts: &[String]) -> Result<(), ClientError> {
    porpoise_core::spec::check_name(name).map_err(|e| ClientError::invalid(format!("node name {e}")))?;
    let ca_key_path = dir.join("ca.key");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
        ClientError::invalid(format!(
            "{}: cannot read the CA key ({e}): make it with `porpoise cert ca`",
            ca_key_path.display()
        ))
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| ClientError::invalid(format!("{}: not a key: {e}", ca_key_path.display())))?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut names = vec![role.name().to_string()];
    names.extend(hosts.iter().cloned());
    if hosts.is_empty() {
        // replicas that share one certificate: it speaks for any host of its role
        names.push(role.shared_name().to_string());
    }
    let mut params = CertificateParams::new(names).map_err(|e| ClientError::invalid(format!("--host: {e}")))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, 2);
    let key = KeyPair::generate().map_err(|e| failed("make a key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| failed("sign the certificate", e))?;
    let (cert_path, key_path): (PathBuf, PathBuf) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)?;
    if hosts.is_empty() {
        outln!("{}: {} certificate shared by replicas: it speaks for any host", cert_path.display(), role.name())?;
    } else {
        outln!("{}: {} certificate for {}", cert_path.display(), role.name(), hosts.join(", "))?;
    }
    outln!("{}: its key (--tls-key)", key_path.display())?;
    Ok(())
}
