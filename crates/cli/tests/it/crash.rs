//! Crash consistency: hotsplice killed (SIGKILL) at each step of an apply and of an undo. The
//! target must keep running, and after `hotsplice recover` its code must be either the
//! original or the fully patched bytes, with matching behaviour and records.

use serde_json::Value;

use crate::live::{App, Setup, ok};

const APPLY_POINTS: &[&str] = &[
    "attached",
    "mapped",
    "loaded",
    "checked",
    "between-writes",
    "written",
    "released",
];
const UNDO_POINTS: &[&str] = &[
    "checked",
    "between-writes",
    "written",
    "released",
    "restored",
];

fn hotsplice_with_fault(fault: &str, args: &[&str]) -> std::process::Output {
    crate::hs()
        .args(args)
        .env("HOTSPLICE_FAULT", fault)
        .output()
        .unwrap()
}

fn entries(setup: &Setup, bundle: &str, pid: u32) -> Vec<(String, u64)> {
    let v = ok(&setup.live("check", bundle, pid));
    v["processes"][0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let entry = f["entry"].as_str().unwrap().trim_start_matches("0x");
            (
                f["name"].as_str().unwrap().to_string(),
                u64::from_str_radix(entry, 16).unwrap(),
            )
        })
        .collect()
}

/// After recovery: every entry original or every entry a jump, behaviour and records to match.
fn check_consistent(
    setup: &Setup,
    app: &App,
    id: &str,
    originals: &[(u64, Vec<u8>)],
    what: &str,
) -> bool {
    let recovered = crate::hs()
        .args(["recover", "--state-dir", &setup.state, "--json"])
        .output()
        .unwrap();
    assert_eq!(
        recovered.status.code(),
        Some(0),
        "{what}: recover failed: {recovered:?}"
    );
    let jumped: Vec<bool> = originals
        .iter()
        .map(|(address, bytes)| {
            let now = app.bytes(*address, bytes.len());
            if now == *bytes {
                false
            } else {
                assert_eq!(
                    now[0], 0xe9,
                    "{what}: entry {address:#x} is neither original nor a jump"
                );
                true
            }
        })
        .collect();
    let patched = jumped[0];
    assert!(
        jumped.iter().all(|&j| j == patched),
        "{what}: a mix of old and new entries: {jumped:?}"
    );
    app.expect(if patched {
        "value 15 hello, patched"
    } else {
        "value 14 hello"
    });
    let pid = app.pid().to_string();
    let listed = ok(&crate::hs()
        .args(["list", "--pid", &pid, "--state-dir", &setup.state, "--json"])
        .output()
        .unwrap());
    let ids: Vec<&str> = listed["processes"][0]["patches"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        ids == [id],
        patched,
        "{what}: the record says {ids:?}, the code patched={patched}"
    );
    // No journal left, and no patch memory left mapped when unpatched.
    let again = crate::hs()
        .args(["recover", "--state-dir", &setup.state])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to recover"),
        "{what}"
    );
    if !patched {
        let fresh = format!("{}-empty", setup.state);
        let from_memory: Value = ok(&crate::hs()
            .args(["list", "--pid", &pid, "--state-dir", &fresh, "--json"])
            .output()
            .unwrap());
        assert_eq!(
            from_memory["processes"][0]["patches"]
                .as_array()
                .map(Vec::len),
            Some(0),
            "{what}: patch memory left mapped"
        );
    }
    patched
}

#[test]
fn killed_during_apply_ends_untouched_or_fully_patched() {
    let setup = Setup::new("crash-apply", "");
    let (bundle, id) = setup.bundle("both.patch", "");
    let bundle = bundle.to_str().unwrap().to_string();
    for point in APPLY_POINTS {
        let app = App::start(&setup.app, 2);
        let pid = app.pid();
        let originals: Vec<(u64, Vec<u8>)> = entries(&setup, &bundle, pid)
            .into_iter()
            .map(|(_, a)| (a, app.bytes(a, 8)))
            .collect();
        assert_eq!(
            originals.len(),
            2,
            "the bundle replaces compute and greeting"
        );
        let out = hotsplice_with_fault(
            point,
            &[
                "apply",
                &bundle,
                "--pid",
                &pid.to_string(),
                "--state-dir",
                &setup.state,
            ],
        );
        assert_eq!(
            out.status.code(),
            None,
            "{point}: hotsplice should have been killed: {out:?}"
        );
        let patched = check_consistent(&setup, &app, &id, &originals, point);
        if patched {
            ok(&setup.live("undo", &id, pid));
            app.expect("value 14 hello");
        }
    }
}

#[test]
fn killed_during_undo_ends_patched_or_fully_undone() {
    let setup = Setup::new("crash-undo", "");
    let (bundle, id) = setup.bundle("both.patch", "");
    let bundle = bundle.to_str().unwrap().to_string();
    for point in UNDO_POINTS {
        let app = App::start(&setup.app, 2);
        let pid = app.pid();
        let originals: Vec<(u64, Vec<u8>)> = entries(&setup, &bundle, pid)
            .into_iter()
            .map(|(_, a)| (a, app.bytes(a, 8)))
            .collect();
        ok(&setup.live("apply", &bundle, pid));
        app.expect("value 15 hello, patched");
        let out = hotsplice_with_fault(
            point,
            &[
                "undo",
                &id,
                "--pid",
                &pid.to_string(),
                "--state-dir",
                &setup.state,
            ],
        );
        assert_eq!(
            out.status.code(),
            None,
            "{point}: hotsplice should have been killed: {out:?}"
        );
        let patched = check_consistent(&setup, &app, &id, &originals, point);
        if patched {
            ok(&setup.live("undo", &id, pid));
            app.expect("value 14 hello");
        }
    }
}

#[test]
fn an_interrupted_operation_must_be_recovered_first() {
    let setup = Setup::new("crash-refuse", "");
    let (bundle, id) = setup.bundle("fix.patch", "");
    let bundle = bundle.to_str().unwrap().to_string();
    let app = App::start(&setup.app, 1);
    let pid = app.pid().to_string();
    let out = hotsplice_with_fault(
        "mapped",
        &["apply", &bundle, "--pid", &pid, "--state-dir", &setup.state],
    );
    assert_eq!(out.status.code(), None);
    let again = setup.live("apply", &bundle, app.pid());
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("recover"),
        "{again:?}"
    );
    let recovered = crate::hs()
        .args(["recover", "--pid", &pid, "--state-dir", &setup.state])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&recovered.stdout).contains("rolled back"),
        "{recovered:?}"
    );
    ok(&setup.live("apply", &bundle, app.pid()));
    app.expect("value 15 hello");
    ok(&setup.live("undo", &id, app.pid()));
}
