//! The trust policy on real directories: permission checks, FIFOs and links among the keys,
//! and which bundles and modules are accepted, with the messages users see.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hotsplice_bundle::signature::{SecretKey, sign_detached};
use hotsplice_bundle::{Bundle, Provenance, TargetIdentity, TargetKind};
use hotsplice_trust::{
    KeyError, ModuleUntrusted, Policy, ReadError, Signer, TrustError, detached_path, read_regular,
    trusted_keys,
};

/// A fresh directory under `/tmp` (sticky, root-owned: a safe ancestor), mode 0755.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hotsplice-trust-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A trusted-keys directory holding the public half of `key`.
fn keys_dir(root: &Path, key: &SecretKey) -> PathBuf {
    let dir = root.join("trusted-keys");
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o755);
    std::fs::write(dir.join("ops.pub"), key.public().to_text()).unwrap();
    dir
}

fn bundle() -> Bundle {
    Bundle {
        id: "hs-0123456789ab".into(),
        target: TargetIdentity {
            path: "prog".into(),
            kind: TargetKind::Executable,
            build_id: Some("abcd".into()),
            sha256: None,
            size: Some(1234),
        },
        objects: Vec::new(),
        refusals: Vec::new(),
        warnings: Vec::new(),
        provenance: Provenance {
            diff_name: "fix.patch".into(),
            diff_sha256: "00".repeat(32),
            source_id: "11".repeat(32),
            compiler: "gcc".into(),
            build_command: "make".into(),
            objects: Vec::new(),
            created_unix: 1,
            hotsplice_version: "0.1.0".into(),
        },
    }
}

fn sealed(key: Option<&SecretKey>) -> hotsplice_bundle::Sealed {
    let bytes = hotsplice_bundle::write_signed(&bundle(), key).unwrap();
    hotsplice_bundle::read(&bytes).unwrap()
}

/// The error and its sources joined by `: `, as the binary prints them (`{:#}`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[test]
fn keys_are_read_only_from_safe_places() {
    let root = scratch("keys");
    let key = SecretKey::generate().unwrap();
    let dir = keys_dir(&root, &key);
    std::fs::write(dir.join("README"), "not a key").unwrap();
    let keys = trusted_keys(&dir).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id(), key.public().id());

    // A directory others may write to.
    chmod(&dir, 0o777);
    let e = trusted_keys(&dir).unwrap_err();
    assert!(matches!(e, KeyError::Directory { .. }), "{e:?}");
    assert_eq!(
        chain(&e),
        format!(
            "trusted-keys directory {d}: {d} is writable by group or others (mode 777): refusing to trust keys from it",
            d = dir.display()
        )
    );
    chmod(&dir, 0o755);

    // A key file others may write to.
    chmod(&dir.join("ops.pub"), 0o666);
    let e = trusted_keys(&dir).unwrap_err();
    assert!(matches!(e, KeyError::Writable { mode: 0o666, .. }), "{e:?}");
    chmod(&dir.join("ops.pub"), 0o644);

    // A link to a key in a directory others may write to.
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    std::fs::write(open.join("evil.pub"), key.public().to_text()).unwrap();
    std::os::unix::fs::symlink(open.join("evil.pub"), dir.join("evil.pub")).unwrap();
    let e = trusted_keys(&dir).unwrap_err();
    assert!(matches!(e, KeyError::Link { .. }), "{e:?}");
    assert!(
        chain(&e).starts_with(&format!(
            "{} is a link to {}: {} is writable by group or others",
            dir.join("evil.pub").display(),
            open.join("evil.pub").display(),
            open.display()
        )),
        "{}",
        chain(&e)
    );
    std::fs::remove_file(dir.join("evil.pub")).unwrap();

    // A FIFO named like a key: refused at once, never a hang.
    assert!(
        std::process::Command::new("mkfifo")
            .arg(dir.join("fifo.pub"))
            .status()
            .unwrap()
            .success()
    );
    let e = trusted_keys(&dir).unwrap_err();
    assert!(
        matches!(e, KeyError::Read(ReadError::NotRegular { .. })),
        "{e:?}"
    );
    assert_eq!(
        chain(&e),
        format!("{} is not a regular file", dir.join("fifo.pub").display())
    );
    std::fs::remove_file(dir.join("fifo.pub")).unwrap();

    // Not a key.
    std::fs::write(dir.join("bad.pub"), "ed25519 zz").unwrap();
    let e = trusted_keys(&dir).unwrap_err();
    assert!(matches!(e, KeyError::Malformed { .. }), "{e:?}");
    assert!(chain(&e).starts_with(&format!("{}: key: ", dir.join("bad.pub").display())));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn read_regular_refuses_what_is_not_a_small_regular_file() {
    let root = scratch("read");
    let file = root.join("f");
    std::fs::write(&file, [0u8; 100]).unwrap();
    assert_eq!(read_regular(&file, 100).unwrap().len(), 100);
    let e = read_regular(&file, 99).unwrap_err();
    assert!(matches!(
        e,
        ReadError::TooLarge {
            len: 100,
            cap: 99,
            ..
        }
    ));
    assert!(matches!(
        read_regular(&root, 100),
        Err(ReadError::NotRegular { .. })
    ));
    let e = read_regular(&root.join("missing"), 100).unwrap_err();
    assert!(chain(&e).starts_with(&format!("cannot read {}: ", root.join("missing").display())));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bundles_are_accepted_only_when_a_trusted_key_signed_them() {
    let root = scratch("bundles");
    let key = SecretKey::generate().unwrap();
    let other = SecretKey::generate().unwrap();
    let dir = keys_dir(&root, &key);
    let policy = Policy {
        trust_dir: &dir,
        allow_unsigned: false,
    };
    assert_eq!(
        policy.accept_bundle(&sealed(Some(&key))).unwrap(),
        Signer::Key(key.public().id())
    );
    let e = policy.accept_bundle(&sealed(None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the bundle is not signed; trusted keys: {} — refusing to apply (sign it with `hotsplice sign`, trust the key, or pass --allow-unsigned)",
            dir.display()
        )
    );
    let e = policy.accept_bundle(&sealed(Some(&other))).unwrap_err();
    assert!(e.to_string().contains("which is not a trusted key"), "{e}");

    // --allow-unsigned: accepted, and said so.
    let lenient = Policy {
        allow_unsigned: true,
        ..policy
    };
    let signer = lenient.accept_bundle(&sealed(None)).unwrap();
    assert_eq!(
        signer.to_string(),
        "unverified (the bundle is not signed; --allow-unsigned)"
    );

    // An unusable directory refuses everything, unless unsigned input is allowed.
    chmod(&dir, 0o777);
    let e = policy.accept_bundle(&sealed(Some(&key))).unwrap_err();
    assert!(matches!(e, TrustError::Keys { .. }));
    assert!(
        chain(&e).starts_with(&format!(
            "cannot use the trusted keys (create {} with root-owned *.pub files, or pass --allow-unsigned): trusted-keys directory",
            dir.display()
        )),
        "{}",
        chain(&e)
    );
    assert!(matches!(
        lenient.accept_bundle(&sealed(Some(&key))),
        Ok(Signer::Unverified(_))
    ));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn modules_need_a_detached_signature_by_a_trusted_key() {
    let root = scratch("modules");
    let key = SecretKey::generate().unwrap();
    let other = SecretKey::generate().unwrap();
    let dir = keys_dir(&root, &key);
    let policy = Policy {
        trust_dir: &dir,
        allow_unsigned: false,
    };
    let module = root.join("fix.ko");
    let bytes = b"\x7fELF a module".to_vec();
    std::fs::write(&module, &bytes).unwrap();
    let signature = detached_path(&module);
    assert_eq!(signature, root.join("fix.ko.hsig"));

    let e = policy.accept_module(&module, &bytes, None).unwrap_err();
    assert!(
        matches!(
            &e,
            TrustError::Module {
                why: ModuleUntrusted::NoSignature { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: it has no signature ({} not found); trusted keys: {} — refusing to load it into the kernel (sign it with `hotsplice sign`, trust the key, or pass --allow-unsigned)",
            module.display(),
            signature.display(),
            dir.display()
        )
    );

    std::fs::write(&signature, sign_detached(&bytes, &other, None)).unwrap();
    let e = policy.accept_module(&module, &bytes, None).unwrap_err();
    assert!(e.to_string().contains(&format!(
        "it is signed by {}, which is not a trusted key",
        other.public().id()
    )));

    std::fs::write(&signature, sign_detached(&bytes, &key, None)).unwrap();
    assert_eq!(
        policy.accept_module(&module, &bytes, None).unwrap(),
        Signer::Key(key.public().id())
    );
    // Modified after signing.
    let e = policy
        .accept_module(&module, b"\x7fELF another module", None)
        .unwrap_err();
    assert!(e.to_string().contains("does not match the module"), "{e}");
    // A signature given elsewhere.
    let elsewhere = root.join("sig");
    std::fs::write(&elsewhere, "something else").unwrap();
    let e = policy
        .accept_module(&module, &bytes, Some(&elsewhere))
        .unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "{} is not a hotsplice signature",
            elsewhere.display()
        )),
        "{e}"
    );
    let lenient = Policy {
        allow_unsigned: true,
        ..policy
    };
    assert!(matches!(
        lenient.accept_module(&module, &bytes, Some(&elsewhere)),
        Ok(Signer::Unverified(_))
    ));
    let _ = std::fs::remove_dir_all(&root);
}
