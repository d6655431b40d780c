//! RSA key pairs: generation, PEM import and export, fingerprints and key files.
//!
//! Private keys are PKCS#8 (RFC 5208), optionally encrypted with PBES2 (PBKDF2-HMAC-SHA256
//! with AES-256-CBC, as pyca/cryptography's `BestAvailableEncryption` writes them); public
//! keys are SubjectPublicKeyInfo. Every intermediate DER or PEM copy of a private key is held in a
//! type that zeroes itself on drop.

use std::fs;
use std::io::Write;
use std::path::Path;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{PrivateDecryptingKey, PublicEncryptingKey};
use pkcs8::der::pem::LineEnding;
use pkcs8::der::{Decode, SecretDocument};
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use spki::SubjectPublicKeyInfoRef;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Smallest RSA modulus accepted on load.
pub const MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted on load.
pub const MAX_BITS: usize = 8192;
/// PBKDF2-HMAC-SHA256 iterations used when writing a password-protected key.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

const RSA_OID: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// An RSA private key (with its public half).
#[derive(Clone)]
pub struct PrivateKey {
    inner: PrivateDecryptingKey,
    public: PublicKey,
}

/// An RSA public key.
#[derive(Clone)]
pub struct PublicKey {
    inner: PublicEncryptingKey,
    der: Vec<u8>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(rsa {} bits, redacted)", self.key_size())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey(rsa {} bits, {})",
            self.key_size(),
            self.fingerprint()
        )
    }
}

fn modulus_bits(modulus: &[u8]) -> usize {
    let trimmed: &[u8] = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

fn check_size(bits: usize) -> Result<()> {
    if bits < MIN_BITS {
        return Err(Error::key(format!(
            "RSA key of {bits} bits is too small: at least {MIN_BITS} bits are required"
        )));
    }
    if bits > MAX_BITS {
        return Err(Error::key(format!(
            "RSA key of {bits} bits is too large: at most {MAX_BITS} bits are supported"
        )));
    }
    Ok(())
}

/// Most PBKDF2 iterations accepted on load (a hostile file must not hang the process).
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Most scrypt memory accepted on load (128 * N * r bytes).
pub const MAX_SCRYPT_MEMORY: u64 = 256 << 20;

/// Refuse key-derivation parameters that would cost unbounded time or memory.
fn check_kdf_cost(scheme: &pkcs8::pkcs5::EncryptionScheme<'_>) -> Result<()> {
    use pkcs8::pkcs5::{pbes2::Kdf, EncryptionScheme};
    let EncryptionScheme::Pbes2(params) = scheme else {
        return Err(Error::key(
            "unsupported private key encryption (PBES1): re-encrypt it with PBES2",
        ));
    };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => Err(Error::key(format!(
            "private key encryption uses {} PBKDF2 iterations (at most {MAX_PBKDF2_ITERATIONS})",
            p.iteration_count
        ))),
        Kdf::Scrypt(s) => {
            let memory = 128u64
                .saturating_mul(s.cost_parameter)
                .saturating_mul(u64::from(s.block_size));
            if memory > MAX_SCRYPT_MEMORY || s.parallelization > 16 {
                Err(Error::key(
                    "private key encryption uses scrypt parameters beyond the accepted cost",
                ))
            } else {
                Ok(())
            }
        }
        Kdf::Pbkdf2(_) => Ok(()),
        _ => Err(Error::key(
            "unsupported key derivation function in the private key",
        )),
    }
}

impl PrivateKey {
    /// Generate a key pair with e = 65537. `bits` is 2048, 3072 or 4096.
    ///
    /// Several generations race on the cores this process may use and the first to finish
    /// is kept (see [`crate::keygen`]); the calling thread waits.
    pub fn generate(bits: usize) -> Result<Self> {
        if !matches!(bits, 2048 | 3072 | 4096) {
            return Err(Error::key(format!(
                "unsupported RSA key size {bits}: use 2048, 3072 or 4096"
            )));
        }
        let der = crate::keygen::generate_raced(bits, crate::keygen::default_racers())?;
        PrivateKey::from_pkcs8_der(&der)
    }

    fn from_inner(inner: PrivateDecryptingKey) -> Result<Self> {
        let public = PublicKey::from_inner(inner.public_key())?;
        Ok(PrivateKey { inner, public })
    }

    /// Load an unencrypted PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let info = PrivateKeyInfo::from_der(der)
            .map_err(|_| Error::key("not a valid PKCS#8 private key"))?;
        if info.algorithm.oid != RSA_OID {
            return Err(Error::key(format!(
                "not an RSA private key (algorithm {})",
                info.algorithm.oid
            )));
        }
        let rsa = pkcs1::RsaPrivateKey::from_der(info.private_key)
            .map_err(|_| Error::key("not a valid RSA private key"))?;
        check_size(modulus_bits(rsa.modulus.as_bytes()))?;
        let inner = PrivateDecryptingKey::from_pkcs8(der)
            .map_err(|e| Error::key(format!("RSA private key rejected: {e}")))?;
        Self::from_inner(inner)
    }

    /// Load a PEM private key: `PRIVATE KEY`, `ENCRYPTED PRIVATE KEY` (needs `password`) or
    /// `RSA PRIVATE KEY` (unencrypted PKCS#1).
    pub fn from_pem(pem: &[u8], password: Option<&[u8]>) -> Result<Self> {
        let text =
            std::str::from_utf8(pem).map_err(|_| Error::key("private key file is not PEM text"))?;
        let (label, doc) = SecretDocument::from_pem(text.trim())
            .map_err(|_| Error::key("private key file is not valid PEM"))?;
        match (label, password) {
            ("PRIVATE KEY", None) => Self::from_pkcs8_der(doc.as_bytes()),
            ("PRIVATE KEY" | "RSA PRIVATE KEY", Some(_)) => Err(Error::key(
                "a password was given but the private key is not encrypted",
            )),
            ("ENCRYPTED PRIVATE KEY", None) => Err(Error::key(
                "the private key is encrypted: a password is required",
            )),
            ("ENCRYPTED PRIVATE KEY", Some(pw)) => {
                let enc = EncryptedPrivateKeyInfo::from_der(doc.as_bytes())
                    .map_err(|_| Error::key("not a valid encrypted PKCS#8 private key"))?;
                check_kdf_cost(&enc.encryption_algorithm)?;
                let plain = enc.decrypt(pw).map_err(|_| {
                    Error::key("could not decrypt the private key: wrong password or corrupt file")
                })?;
                Self::from_pkcs8_der(plain.as_bytes())
            }
            ("RSA PRIVATE KEY", None) => Self::from_pkcs1_der(doc.as_bytes()),
            (other, _) => Err(Error::key(format!(
                "unsupported PEM type '{other}': expected PRIVATE KEY"
            ))),
        }
    }

    fn from_pkcs1_der(der: &[u8]) -> Result<Self> {
        let rsa = pkcs1::RsaPrivateKey::from_der(der)
            .map_err(|_| Error::key("not a valid PKCS#1 RSA private key"))?;
        check_size(modulus_bits(rsa.modulus.as_bytes()))?;
        let info = PrivateKeyInfo::new(
            spki::AlgorithmIdentifierRef {
                oid: RSA_OID,
                parameters: Some(pkcs8::der::asn1::AnyRef::NULL),
            },
            der,
        );
        let wrapped = SecretDocument::encode_msg(&info)
            .map_err(|_| Error::key("could not convert PKCS#1 key"))?;
        Self::from_pkcs8_der(wrapped.as_bytes())
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The modulus size in bits.
    pub fn key_size(&self) -> usize {
        self.inner.key_size_bits()
    }

    /// The aws-lc key, for decryption.
    pub fn as_decrypting_key(&self) -> &PrivateDecryptingKey {
        &self.inner
    }

    /// The unencrypted PKCS#8 DER, in memory that is zeroed on drop.
    pub fn to_pkcs8_der(&self) -> Result<SecretDocument> {
        let der = self
            .inner
            .as_der()
            .map_err(|_| Error::Internal("private key export failed"))?;
        SecretDocument::try_from(der.as_ref())
            .map_err(|_| Error::Internal("private key export failed"))
    }

    /// PKCS#8 PEM; with a password, encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC).
    pub fn to_pem(&self, password: Option<&[u8]>) -> Result<Zeroizing<String>> {
        let der = self.to_pkcs8_der()?;
        let doc = match password {
            None => {
                return der
                    .to_pem("PRIVATE KEY", LineEnding::LF)
                    .map_err(|_| Error::Internal("PEM encoding failed"))
            }
            Some(pw) => {
                let mut salt = [0u8; 16];
                let mut iv = [0u8; 16];
                crate::rand::fill(&mut salt)?;
                crate::rand::fill(&mut iv)?;
                let params = pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(
                    PBKDF2_ITERATIONS,
                    &salt,
                    &iv,
                )
                .map_err(|_| Error::Internal("PBES2 parameters"))?;
                let info = PrivateKeyInfo::from_der(der.as_bytes())
                    .map_err(|_| Error::Internal("PKCS#8 re-parse"))?;
                info.encrypt_with_params(params, pw)
                    .map_err(|_| Error::Internal("private key encryption failed"))?
            }
        };
        doc.to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
            .map_err(|_| Error::Internal("PEM encoding failed"))
    }

    /// Write the PEM to `path`, readable by the owner only (0600) from the moment it exists.
    ///
    /// The file is written under a temporary name in the same directory, fsync'ed, and then
    /// linked into place; without `overwrite` an existing file is an error and is untouched.
    pub fn save(&self, path: &Path, password: Option<&[u8]>, overwrite: bool) -> Result<()> {
        let pem = self.to_pem(password)?;
        write_private_file(path, pem.as_bytes(), overwrite)
    }

    /// Read a PEM private key file straight into memory that is wiped on drop, then parse it
    /// as [`PrivateKey::from_pem`] does.
    ///
    /// The file is opened without following a final symlink (`O_NOFOLLOW`) and checked on the
    /// open descriptor (no check-then-read race): it must be a regular file of at most
    /// [`MAX_KEY_FILE`] bytes and, on Unix, owned by the effective user, not writable by
    /// group or others, and not readable by them unless `allow_readable` is set.
    pub fn load(path: &Path, password: Option<&[u8]>, allow_readable: bool) -> Result<Self> {
        let pem = read_key_file(path, allow_readable)?;
        Self::from_pem(&pem, password)
    }
}

/// Largest private key file [`PrivateKey::load`] reads.
pub const MAX_KEY_FILE: u64 = 1 << 20;

fn read_key_file(path: &Path, allow_readable: bool) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut opts = fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a FIFO must not hang before the file-type check below.
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let f = opts
        .open(path)
        .map_err(|e| Error::io(&format!("cannot open {}", path.display()), &e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(&format!("cannot stat {}", path.display()), &e))?;
    if !meta.is_file() {
        return Err(Error::key(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid {
            return Err(Error::key(format!(
                "private key file {p} belongs to another user (uid {}, you are {euid}); use \
                 a key of your own (or, if it is yours: chown {euid} {p})",
                meta.uid(),
                p = path.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(Error::key(format!(
                "private key file {p} is writable by group or others (mode 0{mode:03o}); \
                 fix it with: chmod 600 {p}",
                p = path.display()
            )));
        }
        if mode & 0o077 != 0 && !allow_readable {
            return Err(Error::key(format!(
                "private key file {p} is accessible by group or others (mode 0{mode:03o}); \
                 fix it with: chmod 600 {p}",
                p = path.display()
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = allow_readable;
    if meta.len() > MAX_KEY_FILE {
        return Err(Error::key(format!(
            "private key file {} is too large (over {MAX_KEY_FILE} bytes)",
            path.display()
        )));
    }
    // Capacity for the whole file up front, so the buffer never reallocates (and leaves no
    // unwiped copy behind); `take` bounds a file that grows after the fstat.
    let mut pem = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    f.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| Error::io(&format!("cannot read {}", path.display()), &e))?;
    if pem.len() as u64 > MAX_KEY_FILE {
        return Err(Error::key(format!(
            "private key file {} is too large (over {MAX_KEY_FILE} bytes)",
            path.display()
        )));
    }
    Ok(pem)
}

/// Create `path` with `data`, mode 0600, atomically; see [`write_new_file`].
pub fn write_private_file(path: &Path, data: &[u8], overwrite: bool) -> Result<()> {
    write_new_file(path, data, overwrite, 0o600)
}

/// Create `path` holding `data` with permission bits `mode` (Unix), atomically.
///
/// `data` goes to a new file with a random name in the same directory (exclusive create,
/// `O_NOFOLLOW`, created with `mode` so it is never more open than asked), which is fsync'ed
/// and then hard-linked into place (fails if `path` exists: no overwrite) or, with
/// `overwrite`, renamed over it. The temporary name is removed in every case, and the
/// directory is fsync'ed.
pub fn write_new_file(path: &Path, data: &[u8], overwrite: bool, mode: u32) -> Result<()> {
    if mode > 0o7777 {
        return Err(Error::Value(
            "mode must be permission bits (at most 0o7777)".into(),
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io(std::io::ErrorKind::InvalidInput, "not a file path".into()))?;
    if !overwrite && fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    let mut suffix = [0u8; 8];
    crate::rand::fill(&mut suffix)?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        u64::from_le_bytes(suffix)
    ));
    let result = write_temp(&tmp, data, mode).and_then(|()| publish(&tmp, path, overwrite));
    let _ = fs::remove_file(&tmp);
    result?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn exists(path: &Path) -> Error {
    Error::Io(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} already exists; refusing to overwrite it",
            path.display()
        ),
    )
}

fn write_temp(tmp: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode & 0o7777).custom_flags(libc::O_NOFOLLOW);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(tmp)
        .map_err(|e| Error::io(&format!("cannot create {}", tmp.display()), &e))?;
    f.write_all(data)
        .map_err(|e| Error::io(&format!("cannot write {}", tmp.display()), &e))?;
    f.sync_all()
        .map_err(|e| Error::io(&format!("cannot sync {}", tmp.display()), &e))
}

fn publish(tmp: &Path, path: &Path, overwrite: bool) -> Result<()> {
    if overwrite {
        fs::rename(tmp, path)
            .map_err(|e| Error::io(&format!("cannot write {}", path.display()), &e))
    } else {
        // link(2) fails if the target exists: no window where another file is replaced.
        fs::hard_link(tmp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(path)
            } else {
                Error::io(&format!("cannot write {}", path.display()), &e)
            }
        })
    }
}

impl PublicKey {
    fn from_inner(inner: PublicEncryptingKey) -> Result<Self> {
        let der = inner
            .as_der()
            .map_err(|_| Error::Internal("public key export failed"))?
            .as_ref()
            .to_vec();
        Ok(PublicKey { inner, der })
    }

    /// Parse SubjectPublicKeyInfo DER.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let info = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|_| Error::key("not a valid public key (SubjectPublicKeyInfo)"))?;
        if info.algorithm.oid != RSA_OID {
            return Err(Error::key(format!(
                "not an RSA public key (algorithm {})",
                info.algorithm.oid
            )));
        }
        let bits = info
            .subject_public_key
            .as_bytes()
            .and_then(|b| pkcs1::RsaPublicKey::from_der(b).ok())
            .map(|k| modulus_bits(k.modulus.as_bytes()))
            .ok_or_else(|| Error::key("not a valid RSA public key"))?;
        check_size(bits)?;
        let inner = PublicEncryptingKey::from_der(der)
            .map_err(|e| Error::key(format!("RSA public key rejected: {e}")))?;
        Self::from_inner(inner)
    }

    /// Parse SubjectPublicKeyInfo PEM (`PUBLIC KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let text =
            std::str::from_utf8(pem).map_err(|_| Error::key("public key is not PEM text"))?;
        let (label, der) = pkcs8::der::pem::decode_vec(text.trim().as_bytes())
            .map_err(|_| Error::key("public key is not valid PEM"))?;
        if label != "PUBLIC KEY" {
            return Err(Error::key(format!(
                "unsupported PEM type '{label}': expected PUBLIC KEY"
            )));
        }
        Self::from_der(&der)
    }

    /// SPKI DER.
    pub fn to_der(&self) -> &[u8] {
        &self.der
    }

    /// SPKI PEM with 64-character lines and a final newline.
    pub fn to_pem(&self) -> String {
        pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &self.der)
            .expect("PEM encoding of DER cannot fail")
    }

    /// `sha256:` followed by the lower-case hex SHA-256 of the SPKI DER.
    pub fn fingerprint(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.der);
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in digest.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The modulus size in bits.
    pub fn key_size(&self) -> usize {
        self.inner.key_size_bits()
    }

    /// The modulus size in bytes (the length of an OAEP ciphertext).
    pub fn key_size_bytes(&self) -> usize {
        self.inner.key_size_bytes()
    }

    /// The aws-lc key, for encryption.
    pub fn as_encrypting_key(&self) -> &PublicEncryptingKey {
        &self.inner
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for PublicKey {}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.der.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keygen::generate_raced;

    #[test]
    fn raced_keys_are_valid_and_distinct() {
        let one = PrivateKey::from_pkcs8_der(&generate_raced(2048, 1).unwrap()).unwrap();
        let raced = PrivateKey::from_pkcs8_der(&generate_raced(2048, 3).unwrap()).unwrap();
        assert_eq!(raced.public_key().key_size(), 2048);
        assert_ne!(one.public_key().to_der(), raced.public_key().to_der());
        let public = raced.public_key().as_encrypting_key();
        let sealed = crate::rsa::oaep_encrypt(public, b"secret", None).unwrap();
        let opened = crate::rsa::oaep_decrypt(raced.as_decrypting_key(), &sealed, None).unwrap();
        assert_eq!(opened.as_slice(), b"secret");
    }
}
