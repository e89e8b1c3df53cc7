//! Keys, signing and the audit log.
//!
//! `hotsplice key generate` makes an ed25519 key pair; `hotsplice build --sign KEY` and
//! `hotsplice sign` sign bundles. `check` and `apply` accept a bundle only when it is signed by
//! a key in the trusted-keys directory (`/etc/hotsplice/trusted-keys`, `*.pub`), which must
//! belong to root (or to the user running hotsplice) and be writable by no one else;
//! `--allow-unsigned` overrides that, explicitly, and the audit log says so. That policy is
//! `hotsplice_trust`'s; [`accept`] calls it. Every apply, undo, refusal and recovery is
//! recorded in the audit log: syslog (`/dev/log`) when present, else a root-only file
//! (`/var/log/hotsplice/audit.log`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use hotsplice_bundle::signature::SecretKey;
pub use hotsplice_trust::DEFAULT_TRUST_DIR;
use hotsplice_trust::{MAX_KEY, Policy, detached_path};

use crate::args::{KeyArgs, KeyCommand, SignArgs};
use crate::output::AuditRecord;
use crate::{EXIT_OK, Exit};

/// Reads a secret key file.
pub fn read_secret(path: &Path) -> Result<SecretKey, Exit> {
    let bytes = hotsplice_trust::read_regular(path, MAX_KEY)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("key {}", path.display()))
        .map_err(Exit::bad_input)?;
    let text = String::from_utf8_lossy(&bytes);
    SecretKey::from_text(&text)
        .with_context(|| path.display().to_string())
        .map_err(Exit::bad_input)
}

/// `hotsplice key`.
pub fn key(args: &KeyArgs) -> Result<ExitCode, Exit> {
    let KeyCommand::Generate { out } = &args.command;
    let secret = SecretKey::generate()
        .context("generating a key")
        .map_err(Exit::environment)?;
    let secret_path = out.with_extension("key");
    let public_path = out.with_extension("pub");
    let write = |path: &Path, text: &str, mode: u32| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    };
    write(&secret_path, &secret.to_text(), 0o600)
        .and_then(|()| write(&public_path, &secret.public().to_text(), 0o644))
        .map_err(Exit::bad_input)?;
    writeln!(
        std::io::stdout().lock(),
        "key {}: secret {} (keep it private), public {} (install in {DEFAULT_TRUST_DIR}/)",
        secret.public().id(),
        secret_path.display(),
        public_path.display()
    )?;
    Ok(ExitCode::from(EXIT_OK))
}

/// The largest file `sign` reads (a bundle or a kernel module).
const MAX_SIGNED: u64 = 256 << 20;

/// Writes (or adds a signer to) the detached signature of a kernel module.
pub fn sign_module(module: &Path, bytes: &[u8], key: &SecretKey) -> anyhow::Result<PathBuf> {
    let path = detached_path(module);
    let existing = std::fs::read_to_string(&path).ok();
    let text = hotsplice_bundle::signature::sign_detached(bytes, key, existing.as_deref());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `hotsplice sign`.
pub fn sign(args: &SignArgs) -> Result<ExitCode, Exit> {
    let key = read_secret(&args.key)?;
    let bytes = hotsplice_trust::read_regular(&args.bundle, MAX_SIGNED)
        .map_err(|e| Exit::bad_input(anyhow::Error::new(e)))?;
    if !bytes.starts_with(b"hotsplice-bundle ") {
        if !bytes.starts_with(b"\x7fELF") {
            return Err(Exit::bad_input(anyhow!(
                "{} is neither a hotsplice bundle nor a kernel module",
                args.bundle.display()
            )));
        }
        // A kernel livepatch module: a detached signature beside it.
        let path = sign_module(&args.bundle, &bytes, &key).map_err(Exit::environment)?;
        writeln!(
            std::io::stdout().lock(),
            "signed {} with key {}: {}",
            args.bundle.display(),
            key.public().id(),
            path.display()
        )?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    let signed = hotsplice_bundle::add_signature(&bytes, &key)
        .with_context(|| args.bundle.display().to_string())
        .map_err(Exit::bad_input)?;
    let out = args.output.as_ref().unwrap_or(&args.bundle);
    std::fs::write(out, signed)
        .with_context(|| format!("writing {}", out.display()))
        .map_err(Exit::environment)?;
    writeln!(
        std::io::stdout().lock(),
        "signed {} with key {}",
        out.display(),
        key.public().id()
    )?;
    Ok(ExitCode::from(EXIT_OK))
}

/// Who vouches for a bundle: the id of the trusted key that signed it, or "unverified (...)"
/// with `--allow-unsigned` (`hotsplice_trust::Policy::accept_bundle`).
pub fn accept(
    sealed: &hotsplice_bundle::Sealed,
    trust_dir: &Path,
    allow_unsigned: bool,
) -> Result<String, Exit> {
    Policy {
        trust_dir,
        allow_unsigned,
    }
    .accept_bundle(sealed)
    .map(|signer| signer.to_string())
    .map_err(|e| Exit::refused(anyhow::Error::new(e)))
}

/// Appends a record to the audit log: syslog (`/dev/log`) when present, else a root-only file
/// (`$HOTSPLICE_AUDIT_LOG`, default `/var/log/hotsplice/audit.log`). Failures to log are
/// reported on stderr, never fatal.
pub fn audit(mut record: AuditRecord) {
    record.time_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    record.hotsplice_pid = std::process::id();
    let line = match serde_json::to_string(&record) {
        Ok(line) => line,
        Err(e) => {
            eprintln!("hotsplice: warning: audit record: {e}");
            return;
        }
    };
    if let Some(path) = std::env::var_os("HOTSPLICE_AUDIT_LOG") {
        if let Err(e) = append(Path::new(&path), &line) {
            eprintln!(
                "hotsplice: warning: audit log {}: {e}",
                Path::new(&path).display()
            );
        }
        return;
    }
    if syslog(&line).is_ok() {
        return;
    }
    let path = Path::new("/var/log/hotsplice/audit.log");
    if let Err(e) = append(path, &line) {
        eprintln!("hotsplice: warning: audit log {}: {e}", path.display());
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

/// Sends a message to the local syslog daemon or journal (`/dev/log`), facility auth,
/// severity notice.
fn syslog(message: &str) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let packet = format!("<37>hotsplice[{}]: {message}", std::process::id());
    socket.send_to(packet.as_bytes(), "/dev/log")?;
    Ok(())
}
