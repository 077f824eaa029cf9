//! The DNS names in a certificate's subject alternative name extension, read from its DER.
//! rustls and webpki check a name against a certificate but do not list its names, and SNI
//! selection needs the list (to index exact names before wildcards); a walk down the few DER
//! elements on the way to the extension is smaller than an X.509 crate.

/// SubjectAltName's object identifier, 2.5.29.17, as DER content bytes.
const SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1d, 0x11];

const SEQUENCE: u8 = 0x30;
const OBJECT_IDENTIFIER: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in TBSCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `dNSName [2] IMPLICIT IA5String` in GeneralName.
const DNS_NAME: u8 = 0x82;

/// Why a certificate's names could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SanError {
    /// The DER does not have the X.509 shape where the names should be.
    #[error("malformed certificate DER ({0})")]
    Malformed(&'static str),
    /// A dNSName is not ASCII text.
    #[error("a subject alternative DNS name is not ASCII")]
    NotAscii,
}

/// The certificate's SAN DNS names, lowercased, in their order; none when it has no SAN.
pub fn dns_names(cert_der: &[u8]) -> Result<Vec<String>, SanError> {
    let (certificate, _) = expect(cert_der, SEQUENCE, "certificate")?;
    let (tbs, _) = expect(certificate, SEQUENCE, "tbsCertificate")?;
    let mut fields = tbs;
    while !fields.is_empty() {
        let (tag, content, rest) = element(fields)?;
        fields = rest;
        if tag == EXTENSIONS {
            return names_in_extensions(content);
        }
    }
    Ok(Vec::new())
}

fn names_in_extensions(explicit: &[u8]) -> Result<Vec<String>, SanError> {
    let (mut extensions, _) = expect(explicit, SEQUENCE, "extensions")?;
    while !extensions.is_empty() {
        let (extension, rest) = expect(extensions, SEQUENCE, "extension")?;
        extensions = rest;
        let (oid, mut after) = expect(extension, OBJECT_IDENTIFIER, "extension id")?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if after.first() == Some(&BOOLEAN) {
            // `critical`, present only when true.
            after = element(after)?.2;
        }
        let (value, _) = expect(after, OCTET_STRING, "extension value")?;
        let (mut general_names, _) = expect(value, SEQUENCE, "subjectAltName")?;
        let mut names = Vec::new();
        while !general_names.is_empty() {
            let (tag, content, rest) = element(general_names)?;
            general_names = rest;
            if tag == DNS_NAME {
                let name = std::str::from_utf8(content)
                    .ok()
                    .filter(|n| n.is_ascii())
                    .ok_or(SanError::NotAscii)?;
                names.push(name.to_ascii_lowercase());
            }
        }
        return Ok(names);
    }
    Ok(Vec::new())
}

/// The first element of `input`, which must carry `tag`: its content and what follows it.
fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), SanError> {
    match element(input)? {
        (found, content, rest) if found == tag => Ok((content, rest)),
        _ => Err(SanError::Malformed(what)),
    }
}

/// One DER element: its (single-byte) tag, its content and the bytes after it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), SanError> {
    let truncated = SanError::Malformed("truncated element");
    let (&tag, rest) = input.split_first().ok_or(truncated.clone())?;
    if tag & 0x1f == 0x1f {
        // Multi-byte tags do not occur on the path to the names.
        return Err(SanError::Malformed("multi-byte tag"));
    }
    let (&first, rest) = rest.split_first().ok_or(truncated.clone())?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        // DER lengths use the fewest bytes; four cover any certificate.
        if count == 0 || count > 4 || rest.len() < count {
            return Err(SanError::Malformed("bad length"));
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (length, rest)
    };
    if rest.len() < length {
        return Err(truncated);
    }
    let (content, rest) = rest.split_at(length);
    Ok((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der(names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn reads_every_dns_name_lowercased_in_order() {
        let der = cert_der(&["Www.Example.com", "*.example.com", "example.org"]);
        assert_eq!(
            dns_names(&der).unwrap(),
            ["www.example.com", "*.example.com", "example.org"]
        );
    }

    #[test]
    fn skips_ip_address_names() {
        let der = cert_der(&["127.0.0.1", "a.example"]);
        assert_eq!(dns_names(&der).unwrap(), ["a.example"]);
    }

    #[test]
    fn certificate_without_san_has_no_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec();
        assert_eq!(dns_names(&der).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn truncated_der_is_an_error_not_a_panic() {
        let der = cert_der(&["a.example"]);
        for len in 0..der.len() {
            assert!(dns_names(&der[..len]).is_err(), "prefix of {len} bytes");
        }
    }
}
