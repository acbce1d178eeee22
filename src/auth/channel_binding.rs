//! `tls-server-end-point` channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS: the
//! hash of the certificate the proxy presents to clients, taken with the hash function of the
//! certificate's own signature, or SHA-256 when that is MD5 or SHA-1 — what libpq computes
//! from the certificate it received, so a man in the middle with another certificate fails.

use std::path::Path;

use ring::digest;

/// The binding data for the first certificate in the PEM file `cert` (the proxy's own).
/// `Ok(None)` when the signature algorithm has no hash ring provides (e.g. Ed25519, RSA-PSS,
/// SHA-224): SCRAM-SHA-256-PLUS is then not offered.
pub fn end_point_of_pem(cert: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let certs = crate::tls::read_certs(cert)?;
    Ok(certs.first().and_then(|c| tls_server_end_point(c.as_ref())))
}

/// The binding data for a DER certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let algorithm = signature_hash(cert_der)?;
    Some(digest::digest(algorithm, cert_der).as_ref().to_vec())
}

/// One DER element: (tag, content, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... };
/// AlgorithmIdentifier ::= SEQUENCE { algorithm OBJECT IDENTIFIER, parameters }.
fn signature_hash(cert: &[u8]) -> Option<&'static digest::Algorithm> {
    let (SEQUENCE, certificate, _) = tlv(cert)? else { return None };
    let (SEQUENCE, _tbs, rest) = tlv(certificate)? else { return None };
    let (SEQUENCE, algorithm_id, _) = tlv(rest)? else { return None };
    let (OID, oid, _) = tlv(algorithm_id)? else { return None };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
    const DSA_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02];
    let by_suffix = |suffix: u8, sha256: u8, sha384: u8, sha512: u8| match suffix {
        s if s == sha256 => Some(&digest::SHA256),
        s if s == sha384 => Some(&digest::SHA384),
        s if s == sha512 => Some(&digest::SHA512),
        _ => None,
    };
    match oid {
        // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 by the RFC's rule.
        [prefix @ .., 0x04 | 0x05] if prefix == RSA => Some(&digest::SHA256),
        [prefix @ .., suffix] if prefix == RSA => by_suffix(*suffix, 0x0b, 0x0c, 0x0d),
        [prefix @ .., suffix] if prefix == ECDSA_SHA2 => by_suffix(*suffix, 0x02, 0x03, 0x04),
        o if o == ECDSA_SHA1 || o == DSA_SHA1 || o == DSA_SHA256 => Some(&digest::SHA256),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate-shaped DER value with the given signature algorithm OID.
    fn cert_with(oid: &[u8]) -> Vec<u8> {
        let mut alg = vec![OID, oid.len() as u8];
        alg.extend_from_slice(oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![SEQUENCE, 0x03, 0x02, 0x01, 0x02];
        body.push(SEQUENCE);
        body.push(alg.len() as u8);
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x02, 0x00, 0xff]);
        let mut der = vec![SEQUENCE, 0x81, body.len() as u8];
        der.extend_from_slice(&body);
        der
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let rsa = |x: u8| [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, x];
        for (oid, len) in [
            (rsa(0x0b).to_vec(), 32),
            (rsa(0x0c).to_vec(), 48),
            (rsa(0x0d).to_vec(), 64),
            (rsa(0x05).to_vec(), 32),
            (rsa(0x04).to_vec(), 32),
            (vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03], 48),
            (vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01], 32),
        ] {
            let cert = cert_with(&oid);
            let hash = tls_server_end_point(&cert).unwrap_or_else(|| panic!("{oid:x?}"));
            assert_eq!(hash.len(), len, "{oid:x?}");
            if len == 32 {
                assert_eq!(hash, digest::digest(&digest::SHA256, &cert).as_ref());
            }
        }
        // Ed25519 (1.3.101.112), RSA-PSS, SHA-224: not offered.
        for oid in [vec![0x2b, 0x65, 0x70], rsa(0x0a).to_vec(), rsa(0x0e).to_vec()] {
            assert_eq!(tls_server_end_point(&cert_with(&oid)), None, "{oid:x?}");
        }
        // Garbage and truncation do not panic.
        let good = cert_with(&rsa(0x0b));
        for n in 0..good.len() {
            assert_eq!(tls_server_end_point(&good[..n]), None, "{n}");
        }
        assert_eq!(tls_server_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
