//! Bundle round trips and malformed bundles: every defect is a typed error, never a panic.

use std::path::Path;
use std::process::Command;

use hotsplice_bundle::{
    Bundle, Error, Link, Provenance, TargetIdentity, TargetKind, convert, read, write,
};

fn compile(dir: &Path, name: &str, source: &str) -> Vec<u8> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("{name}.o"));
    let status = Command::new("gcc")
        .args(["-c", "-g", "-O2", "-ffunction-sections", "-fdata-sections"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("gcc");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// The sample bundle, built once: tests run in parallel and would race on the same files.
fn sample() -> Bundle {
    static SAMPLE: std::sync::OnceLock<Bundle> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(build_sample).clone()
}

fn build_sample() -> Bundle {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let pre = compile(
        &dir,
        "pre",
        "#include <stdio.h>\nstatic int n;\nint f(int x) { n++; printf(\"x=%d\\n\", x); return x + n; }\n",
    );
    let post = compile(
        &dir,
        "post",
        "#include <stdio.h>\nstatic int n;\nint f(int x) { if (x < 0) return -1; n++; printf(\"x=%d\\n\", x); return x + n; }\n",
    );
    let (diff, set) = hotsplice_objdiff::patch_objects("f.o", Some(&pre), Some(&post)).unwrap();
    Bundle {
        id: "hs-0123456789ab".into(),
        target: TargetIdentity {
            path: "prog".into(),
            kind: TargetKind::Executable,
            build_id: Some("abcd".into()),
            sha256: None,
            size: Some(1234),
        },
        objects: vec![convert::object_patch(&diff, &set)],
        refusals: convert::refusals(&diff),
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

#[test]
fn round_trip_preserves_everything() {
    let bundle = sample();
    assert!(!bundle.objects[0].replacements.is_empty());
    // The replaced function's code carries its call-frame rows, from its entry on.
    let code = &bundle.objects[0].pieces[bundle.objects[0].replacements[0].piece];
    assert_eq!(code.frames.first().map(|r| r.offset), Some(0), "{code:?}");
    let bytes = write(&bundle).unwrap();
    assert!(bytes.starts_with(b"hotsplice-bundle 4\n"));
    let sealed = read(&bytes).unwrap();
    assert_eq!(sealed.bundle, bundle);
    assert!(sealed.envelope.signatures.is_empty());
}

#[test]
fn defects_are_typed_errors() {
    let bytes = write(&sample()).unwrap();
    assert!(matches!(read(b"ELF garbage"), Err(Error::NotABundle)));
    assert!(matches!(read(b""), Err(Error::NotABundle)));
    let mut v5 = bytes.clone();
    v5[17] = b'5';
    assert!(matches!(read(&v5), Err(Error::UnsupportedVersion(5))));
    // Versions 1 (no `referenced`), 2 (no `hooks`) and 3 (no `frames`) still read.
    for old in [b'1', b'2', b'3'] {
        let mut v = bytes.clone();
        v[17] = old;
        assert!(read(&v).is_ok());
    }
    assert!(matches!(
        read(&bytes[..bytes.len() - 10]),
        Err(Error::Truncated(_))
    ));
    assert!(matches!(read(&bytes[..25]), Err(Error::Truncated(_))));

    // Tampering with the content (same length) is caught by the hash.
    let mut tampered = bytes.clone();
    let at = tampered.len() - 40;
    tampered[at] = if tampered[at] == b'0' { b'1' } else { b'0' };
    assert!(matches!(read(&tampered), Err(Error::HashMismatch { .. })));
}

#[test]
fn invariants_are_checked_on_write_and_read() {
    let mut bundle = sample();
    let pieces = bundle.objects[0].pieces.len();
    bundle.objects[0].pieces[0].relocs[0].target = Link::Piece { index: pieces + 5 };
    assert!(matches!(write(&bundle), Err(Error::Invalid(_))));

    let mut bundle = sample();
    bundle.objects[0].replacements[0].piece = 99;
    assert!(matches!(write(&bundle), Err(Error::Invalid(_))));

    let mut bundle = sample();
    bundle.objects[0].pieces[0].bytes.pop();
    assert!(matches!(write(&bundle), Err(Error::Invalid(_))));

    // Call-frame rows out of order, or past the end of their piece.
    let mut bundle = sample();
    let code = bundle.objects[0].replacements[0].piece;
    bundle.objects[0].pieces[code].frames.reverse();
    assert!(matches!(write(&bundle), Err(Error::Invalid(_))));
    let mut bundle = sample();
    let piece = &mut bundle.objects[0].pieces[code];
    piece.frames.last_mut().unwrap().offset = piece.size;
    assert!(matches!(write(&bundle), Err(Error::Invalid(_))));

    let mut bundle = sample();
    bundle.id = "nope".into();
    assert!(matches!(write(&bundle), Err(Error::Invalid(_))));
}

/// Single-byte corruption anywhere, with the hash recomputed so the parser and the validator
/// (not only the hash) see it: errors, never panics.
#[test]
fn corrupted_bundles_never_panic() {
    let bundle = sample();
    let content = serde_json::to_vec(&bundle).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bad = content.clone();
        let at = (seed as usize) % bad.len();
        let alphabet = b"0123456789abcdef{}[]\",:-ex";
        bad[at] = alphabet[(seed >> 40) as usize % alphabet.len()];
        let envelope = format!(
            "hotsplice-bundle 1\n{{\"content_sha256\":\"{}\",\"content_length\":{},\"signatures\":[]}}\n",
            hotsplice_bundle::sha256_hex(&bad),
            bad.len()
        );
        let mut file = envelope.into_bytes();
        file.extend(&bad);
        let _ = read(&file);
    }
}
