//! A throwaway certificate authority for the TLS tests (rcgen).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA, and certificates it signs.
pub struct Pki {
    /// The CA certificate, PEM.
    pub ca: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // OpenSSL (Redis) takes a certificate whose subject equals its issuer for
        // self-signed, so the CA and the leaves need names of their own.
        params.distinguished_name.push(DnType::CommonName, "ratelimitd test CA");
        let key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA certificate").pem();
        Self { ca, issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA:
    /// (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0].as_str());
        (params.signed_by(&key, &self.issuer).expect("certificate").pem(), key.serialize_pem())
    }
}
