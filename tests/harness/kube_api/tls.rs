//! The server's TLS identity (a fresh CA and a serving certificate for the
//! addresses clients dial) and the credentials clients read: a kubeconfig,
//! and a service-account directory as the kubelet mounts it in pods.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

/// Where a pod finds its service-account credentials.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A CA and a server certificate signed by it for `ips` plus the in-cluster
/// DNS names; returns the CA's PEM and the rustls config (HTTP/1.1 only,
/// like kube-rs; Go clients fall back to it through ALPN).
pub fn server_tls(ips: &[IpAddr]) -> Result<(String, Arc<rustls::ServerConfig>)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "weft-test-kubernetes-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost"];
    let mut leaf = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    leaf.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    leaf.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .context("server certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca_cert.pem(), Arc::new(config)))
}

/// Writes `path` through a rename, so a reader never sees half a file (the
/// kubelet swaps projected volumes atomically too).
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// A kubeconfig for `server` (JSON, which is YAML to every reader).
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str, namespace: &str) -> String {
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "weft-test", "cluster": {
            "server": server, "certificate-authority-data": STANDARD.encode(ca_pem)}}],
        "users": [{"name": "weft", "user": {"token": token}}],
        "contexts": [{"name": "weft-test", "context": {"cluster": "weft-test", "user": "weft", "namespace": namespace}}],
        "current-context": "weft-test",
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `ca.crt`, `token` and `namespace` in `dir`.
pub fn write_service_account(dir: &Path, ca_pem: &str, token: &str, namespace: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("ca.crt"), ca_pem)?;
    write_atomic(&dir.join("token"), token)?;
    write_atomic(&dir.join("namespace"), namespace)
}
