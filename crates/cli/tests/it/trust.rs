//! Signed bundles: `hotsplice key generate`, `build --sign` (through `HOTSPLICE_SIGNING_KEY`),
//! `sign`, verification against the trusted-keys directory, `--allow-unsigned`, and the
//! audit log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::hs;
use crate::live::{App, Setup, ok};

/// A bundle file split into its three parts: magic line, envelope, content.
fn split(bytes: &[u8]) -> (Vec<u8>, Value, Vec<u8>) {
    let first = bytes.iter().position(|&b| b == b'\n').unwrap();
    let rest = &bytes[first + 1..];
    let second = rest.iter().position(|&b| b == b'\n').unwrap();
    let envelope = serde_json::from_slice(&rest[..second]).unwrap();
    (
        bytes[..first].to_vec(),
        envelope,
        rest[second + 1..].to_vec(),
    )
}

fn join(magic: &[u8], envelope: &Value, content: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.push(b'\n');
    out.extend(serde_json::to_vec(envelope).unwrap());
    out.push(b'\n');
    out.extend(content);
    out
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn only_bundles_signed_by_a_trusted_key_are_applied() {
    let setup = Setup::new("trust", "");
    let (signed, id) = setup.bundle("fix.patch", "");
    let app = App::start(&setup.app, 2);
    let pid = app.pid().to_string();
    let audit = setup.dir.join("audit.log");
    let live = |verb: &str, bundle: &Path, extra: &[&str]| {
        hs().env("HOTSPLICE_AUDIT_LOG", &audit)
            .arg(verb)
            .arg(bundle)
            .args(["--pid", &pid, "--state-dir", &setup.state])
            .args(extra)
            .output()
            .unwrap()
    };
    let bytes = std::fs::read(&signed).unwrap();
    let (magic, envelope, content) = split(&bytes);
    assert_eq!(envelope["signatures"].as_array().unwrap().len(), 1);
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = setup.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    // Unsigned.
    let mut bare = envelope.clone();
    bare["signatures"] = serde_json::json!([]);
    let unsigned = write("unsigned.hsp", &join(&magic, &bare, &content));
    // Signed by a key this machine does not trust.
    let other = setup.dir.join("other");
    assert!(
        hs().args(["key", "generate", "--out"])
            .arg(&other)
            .status()
            .unwrap()
            .success()
    );
    let untrusted = setup.dir.join("untrusted.hsp");
    let signed_other = hs()
        .arg("sign")
        .arg(&unsigned)
        .arg("--key")
        .arg(other.with_extension("key"))
        .arg("-o")
        .arg(&untrusted)
        .output()
        .unwrap();
    assert!(signed_other.status.success(), "{}", stderr(&signed_other));
    // Content changed after signing, with the hash recomputed to match.
    let mut value: Value = serde_json::from_slice(&content).unwrap();
    value["provenance"]["diff_name"] = "something-else.patch".into();
    let changed = serde_json::to_vec(&value).unwrap();
    let mut forged = envelope.clone();
    forged["content_sha256"] = sha256(&changed).into();
    forged["content_length"] = changed.len().into();
    let tampered = write("tampered.hsp", &join(&magic, &forged, &changed));
    // Content changed, hash not recomputed.
    let mut flipped = bytes.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 1;
    let corrupt = write("corrupt.hsp", &flipped);

    for (bundle, code, why) in [
        (&unsigned, 1, "the bundle is not signed"),
        (&untrusted, 1, "which is not a trusted key"),
        (&tampered, 1, "does not match the bundle's content"),
        (&corrupt, 2, "hash"),
    ] {
        for verb in ["check", "apply"] {
            let out = live(verb, bundle, &[]);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{verb} {bundle:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(why),
                "{verb} {bundle:?}: {}",
                stderr(&out)
            );
        }
    }
    app.expect("value 14 hello");

    // A trusted-keys directory others can write to is not trusted.
    let (_, trusted, _) = crate::test_keys();
    let loose = setup.dir.join("loose-keys");
    std::fs::create_dir(&loose).unwrap();
    for entry in std::fs::read_dir(trusted).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), loose.join(entry.file_name())).unwrap();
    }
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = live("check", &signed, &["--trust-dir", loose.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by group or others"),
        "{}",
        stderr(&out)
    );
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(&live(
        "check",
        &signed,
        &["--trust-dir", loose.to_str().unwrap(), "--json"],
    ));

    // --allow-unsigned is explicit, and recorded.
    ok(&live("apply", &unsigned, &["--allow-unsigned", "--json"]));
    app.expect("value 15 hello");
    ok(&live("undo", Path::new(&id), &["--json"]));
    app.expect("value 14 hello");

    // `hotsplice sign` makes the unsigned bundle acceptable.
    let resigned = setup.dir.join("resigned.hsp");
    let (secret, _, _) = crate::test_keys();
    assert!(
        hs().arg("sign")
            .arg(&unsigned)
            .arg("--key")
            .arg(secret)
            .arg("-o")
            .arg(&resigned)
            .status()
            .unwrap()
            .success()
    );
    let applied = ok(&live("apply", &resigned, &["--json"]));
    app.expect("value 15 hello");
    let pause = applied["processes"][0]["pause_us"].as_u64().unwrap();

    let records = audit_records(&audit);
    let refusals = records.iter().filter(|r| r["outcome"] == "refused").count();
    // 3 untrusted bundles × (check, apply), and the loose directory.
    assert_eq!(refusals, 7, "{records:#?}");
    let applies: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "apply" && r["outcome"] == "done")
        .collect();
    assert_eq!(applies.len(), 2, "{records:#?}");
    assert!(
        applies[0]["signer"]
            .as_str()
            .unwrap()
            .contains("--allow-unsigned"),
        "{}",
        applies[0]
    );
    let last = applies[1];
    assert_eq!(last["bundle_sha256"], envelope["content_sha256"]);
    assert_eq!(last["pids"][0].to_string(), pid);
    assert_eq!(last["pause_us"][0]["pause_us"].as_u64(), Some(pause));
    assert_eq!(last["signer"], envelope["signatures"][0]["key_id"]);
    assert!(last["time_unix"].as_u64().unwrap() > 0);
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "undo" && r["outcome"] == "done" && r["patch"] == id.as_str())
    );
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o077,
        0,
        "the audit log is private"
    );
}
