//! Development certificates: a self-signed certificate and key (PEM) made with rcgen.

use std::path::{Path, PathBuf};

/// Why a certificate could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A self-signed certificate for `hosts` (DNS names or IP addresses): (cert PEM, key PEM).
pub fn self_signed(hosts: &[String]) -> Result<(String, String), CertError> {
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec())?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Write `<first host>.crt` and `<first host>.key` into `dir` (created if missing; the key
/// is readable by its owner only). Returns both paths.
pub fn write(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), CertError> {
    let (cert, key) = self_signed(hosts)?;
    let stem = hosts
        .first()
        .map(String::as_str)
        .unwrap_or("localhost")
        .replace(['/', ':', '*'], "_");
    let cert_path = dir.join(format!("{stem}.crt"));
    let key_path = dir.join(format!("{stem}.key"));
    let wr = |p: &Path, data: &str, mode: u32| -> Result<(), CertError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| CertError::Write {
            path: p.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(p)
            .map_err(err)?;
        f.write_all(data.as_bytes()).map_err(err)
    };
    wr(&cert_path, &cert, 0o644)?;
    wr(&key_path, &key, 0o600)?;
    Ok((cert_path, key_path))
}
