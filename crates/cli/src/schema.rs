//! The JSON Schemas of every `--json` output, derived from the report types of `output.rs`,
//! and `docs/json.md`, rendered from them. Both are committed and checked here (golden files:
//! `UPDATE_EXPECT=1 cargo test -p hotsplice --bin hotsplice schema` rewrites them); the
//! integration tests validate real outputs against the committed schemas.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde_json::{Value, json};

use crate::exit::ErrorClass;
use crate::output::*;

/// `diff --json`: the report, or an error object.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DiffJson {
    Report(DiffReport),
    Error(ErrorReport),
}

/// `info --json`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum InfoJson {
    Report(InfoReport<'static>),
    Error(ErrorReport),
}

/// `list --json`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ListJson {
    Report(ListReport),
    Error(ErrorReport),
}

/// `recover --json`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum RecoverJson {
    Report(RecoverReport),
    Error(ErrorReport),
}

/// `install --json`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum InstallJson {
    Report(InstallReport),
    Error(ErrorReport),
}

/// `uninstall --json`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum UninstallJson {
    Report(UninstallReport),
    Error(ErrorReport),
}

/// `status --json`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum StatusJson {
    Report(StatusReport),
    Error(ErrorReport),
}

/// `kernel list --json`: an array of live patches, or an error object.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum KernelListJson {
    Report(Vec<KernelPatch>),
    Error(ErrorReport),
}

/// One schema file: its name, the commands it is for, what they print, and the schema.
struct Documented {
    name: &'static str,
    commands: &'static str,
    what: &'static str,
    schema: Value,
}

fn schema_of<T: JsonSchema>() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    serde_json::to_value(schema).expect("a schema is JSON")
}

/// Every documented output, in the order of docs/json.md.
fn documented() -> Vec<Documented> {
    vec![
        Documented {
            name: "diff",
            commands: "hotsplice diff --json",
            what: "The object diff of two builds: every function and variable with its status, \
                   the static bindings, refusals, warnings, counts and the verdict.",
            schema: schema_of::<DiffJson>(),
        },
        Documented {
            name: "build",
            commands: "hotsplice build --json (with --series, --debian, --kernel too)",
            what: "One object for every outcome: a patch report (`outcome` `written`, \
                   `nothing-to-patch` or `refused`), a series (`outcome` `series`), a kernel \
                   module report, or a failed build (`outcome` `error`).",
            schema: schema_of::<BuildJson>(),
        },
        Documented {
            name: "info",
            commands: "hotsplice info --json",
            what: "The bundle as stored: its envelope and content (docs/bundle-format.md).",
            schema: schema_of::<InfoJson>(),
        },
        Documented {
            name: "live",
            commands: "hotsplice check | apply | undo --json",
            what: "What was done to each process, or an error object with the pause before \
                   the failure.",
            schema: schema_of::<LiveJson>(),
        },
        Documented {
            name: "list",
            commands: "hotsplice list --json",
            what: "The patches applied to each process (not the state record itself).",
            schema: schema_of::<ListJson>(),
        },
        Documented {
            name: "recover",
            commands: "hotsplice recover --json",
            what: "Each interrupted operation found, and what was done with it.",
            schema: schema_of::<RecoverJson>(),
        },
        Documented {
            name: "install",
            commands: "hotsplice install --json",
            what: "The patch installed and the running processes patched now.",
            schema: schema_of::<InstallJson>(),
        },
        Documented {
            name: "uninstall",
            commands: "hotsplice uninstall --json",
            what: "The patch uninstalled and the processes it was undone in.",
            schema: schema_of::<UninstallJson>(),
        },
        Documented {
            name: "status",
            commands: "hotsplice status --json",
            what: "Per installed patch, every process mapping its file and whether it has it.",
            schema: schema_of::<StatusJson>(),
        },
        Documented {
            name: "kernel",
            commands: "hotsplice kernel apply | undo --json",
            what: "How the livepatch transition ended.",
            schema: schema_of::<KernelJson>(),
        },
        Documented {
            name: "kernel-list",
            commands: "hotsplice kernel list --json",
            what: "An array of the running kernel's live patches.",
            schema: schema_of::<KernelListJson>(),
        },
    ]
}

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}

/// Compares `actual` with the committed file, or rewrites it under `UPDATE_EXPECT=1`.
fn check_golden(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{} is not what the report types give (UPDATE_EXPECT=1 rewrites it)",
            path.display()
        ))
    }
}

/// The committed schemas and docs/json.md are those of the report types.
#[test]
fn schemas_and_docs_are_up_to_date() {
    let mut problems = Vec::new();
    let all = documented();
    for d in &all {
        let text = serde_json::to_string_pretty(&d.schema).unwrap() + "\n";
        let path = docs().join("json").join(format!("{}.schema.json", d.name));
        problems.extend(check_golden(&path, &text).err());
    }
    problems.extend(check_golden(&docs().join("json.md"), &render(&all)).err());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// docs/json.md
// ---------------------------------------------------------------------------------------------

const INTRO: &str = "\
# JSON output

Every command with `--json` prints one JSON document on stdout (progress and errors still go
to stderr). This page and the JSON Schemas beside it (`docs/json/*.schema.json`, draft
2020-12) are generated from the report types (`crates/cli/src/output.rs`) by the test
`schema::schemas_and_docs_are_up_to_date` (`UPDATE_EXPECT=1 cargo test -p hotsplice --bin
hotsplice schema` rewrites them after a change), and the integration tests validate every
command's real output against its schema.

Conventions:

- A field listed as *required* is always present; its value may still be `null` where the
  type says so. A field that is not required is absent when the text says so.
- No other field appears (the schemas say `additionalProperties: false`): a consumer may
  rely on the field set, and a change to it is a change to this page.
- Addresses are strings (`\"0x401136\"`); times are numbers of seconds (`seconds`,
  `*_seconds`) or integer microseconds (`*_us`).
- On failure, every command but `build` prints an error object instead of its report:
  `{\"ok\": false, \"class\", \"error\"}` (plus `pause` for the live commands); `class` gives
  the exit status: `refused` 1, `bad-input` 2, `environment` and `interrupted` 3. `build`
  prints `{\"outcome\": \"error\", \"exit\", \"error\"}`.

";

/// A schema's type, for humans.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(options) = schema.get("anyOf").or(schema.get("oneOf")) {
        let options: Vec<String> = options
            .as_array()
            .into_iter()
            .flatten()
            .map(type_of)
            .collect();
        return options.join(" or ");
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if let Some(value) = schema.get("const") {
        return format!("`{value}`");
    }
    let one = |t: &str| -> String {
        match t {
            "array" => match schema.get("items") {
                Some(items) => format!("array of {}", type_of(items)),
                None => "array".to_string(),
            },
            "integer" => match schema.get("minimum") {
                Some(_) => "integer ≥ 0".to_string(),
                None => "integer".to_string(),
            },
            other => other.to_string(),
        }
    };
    match schema.get("type") {
        Some(Value::String(t)) => one(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(one)
            .collect::<Vec<_>>()
            .join(" or "),
        _ if schema.get("additionalProperties").is_some() || schema.is_object() => {
            "object".to_string()
        }
        _ => "any".to_string(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A definition's section: its description and a table of its fields (or its values).
fn render_definition(out: &mut String, name: &str, schema: &Value) {
    out.push_str(&format!("### {name}\n\n"));
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&one_line(d));
        out.push_str("\n\n");
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str("| field | type | required | meaning |\n|---|---|---|---|\n");
        for (field, s) in props {
            out.push_str(&format!(
                "| `{field}` | {} | {} | {} |\n",
                cell(&type_of(s)),
                if required.contains(&field.as_str()) {
                    "yes"
                } else {
                    "no"
                },
                cell(s.get("description").and_then(Value::as_str).unwrap_or(""))
            ));
        }
        out.push('\n');
    } else if let Some(options) = schema.get("oneOf").or(schema.get("anyOf")) {
        out.push_str("One of:\n\n");
        for o in options.as_array().into_iter().flatten() {
            out.push_str(&format!(
                "- {}{}\n",
                type_of(o),
                o.get("description")
                    .and_then(Value::as_str)
                    .map(|d| format!(": {}", one_line(d)))
                    .unwrap_or_default()
            ));
        }
        out.push('\n');
    } else {
        out.push_str(&format!("Type: {}.\n\n", type_of(schema)));
    }
}

/// A table cell: `|` escaped.
fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// docs/json.md: the commands and their documents, then every type once.
fn render(all: &[Documented]) -> String {
    let mut out = String::from(INTRO);
    out.push_str("## Commands\n\n| command | schema | the document |\n|---|---|---|\n");
    let mut types = std::collections::BTreeMap::new();
    for d in all {
        out.push_str(&format!(
            "| `{}` | [`json/{}.schema.json`](json/{}.schema.json) | {}: {} |\n",
            cell(d.commands),
            d.name,
            d.name,
            cell(&type_of(&d.schema)),
            cell(d.what)
        ));
        let defs = d.schema.get("$defs").and_then(Value::as_object);
        for (name, schema) in defs.into_iter().flatten() {
            if let Some(seen) = types.insert(name.clone(), schema.clone()) {
                assert_eq!(&seen, schema, "two report types named {name}");
            }
        }
    }
    out.push_str("\n## Types\n\n");
    for (name, schema) in &types {
        render_definition(&mut out, name, schema);
    }
    out.trim_end().to_string() + "\n"
}

// ---------------------------------------------------------------------------------------------
// Validation can fail
// ---------------------------------------------------------------------------------------------

fn validator(name: &str) -> jsonschema::Validator {
    let d = documented()
        .into_iter()
        .find(|d| d.name == name)
        .expect("a documented output");
    jsonschema::validator_for(&d.schema).expect("a valid schema")
}

/// A `check --json` report with every optional part present.
fn sample_live() -> Value {
    let report = LiveReport {
        ok: true,
        action: Action::Checked,
        patch: "hs-0123".into(),
        wall_us: 1234,
        processes: vec![ProcessReport {
            pid: 42,
            sharers: vec![43],
            module: "/usr/bin/app".into(),
            pause_us: 80,
            stops: 1,
            stopped_threads: vec![StoppedThread {
                tid: 42,
                stopped_us: 80,
                stops: 1,
            }],
            stop_windows: vec![StopWindow {
                start_ns: 1_000_000,
                end_ns: 1_080_000,
                threads: 2,
            }],
            attempts: 1,
            threads: 2,
            realtime: false,
            same_build: Some(true),
            prediction: Some(Prediction {
                action: "apply".into(),
                detail: "no thread in a replaced function".into(),
            }),
            hooks: vec![HookRun {
                kind: "pre-apply".into(),
                took_us: 5,
                result: 0,
            }],
            warnings: vec![],
            shadows: None,
            functions: vec![LiveFunction {
                name: "handle".into(),
                entry: hex(0x401136),
                new_address: hex(0),
                found_by: "symbol".into(),
                replaces_patch: None,
            }],
            namespace: Some(Namespace {
                pid_ns: 4026531836,
                mnt_ns: 4026531841,
                pid_inside: 1,
            }),
        }],
        skipped: vec![],
        failed: vec![FailedProcess {
            pid: 44,
            class: ErrorClass::Environment,
            error: "process exited".into(),
            namespace: None,
        }],
        hooks: Some(vec![BundleHook {
            kind: "pre-apply".into(),
            function: "check_ready".into(),
        }]),
    };
    serde_json::to_value(report).unwrap()
}

/// What a mutation does, and how.
type Mutation = (&'static str, fn(&mut Value));

/// A report passes its schema, and each kind of mutation makes it fail: a required field
/// missing, a field no one documented, a wrong type, an undocumented word, a field of the
/// wrong document.
#[test]
fn validation_fails_on_every_kind_of_mutation() {
    let live = validator("live");
    let good = sample_live();
    assert!(live.is_valid(&good), "{:?}", live.validate(&good).err());
    let error = serde_json::to_value(ErrorReport {
        ok: false,
        class: ErrorClass::Refused,
        error: "no".into(),
        pause: None,
    })
    .unwrap();
    assert!(live.is_valid(&error));

    let mutations: Vec<Mutation> = vec![
        ("required field removed", |v| {
            v["processes"][0]
                .as_object_mut()
                .unwrap()
                .remove("pause_us");
        }),
        ("unknown field added", |v| {
            v["processes"][0]["paused"] = json!(true)
        }),
        ("wrong type", |v| {
            v["processes"][0]["functions"][0]["entry"] = json!(4198710)
        }),
        ("undocumented word", |v| v["action"] = json!("patched")),
        ("null where not nullable", |v| {
            v["processes"][0]["module"] = Value::Null
        }),
        ("negative count", |v| v["processes"][0]["stops"] = json!(-1)),
        ("absent where it must be null", |v| {
            v["processes"][0].as_object_mut().unwrap().remove("shadows");
        }),
    ];
    for (what, mutate) in &mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!live.is_valid(&bad), "{what}: still valid: {bad:#}");
    }
    // An error object with a class no one documented.
    let mut bad = error.clone();
    bad["class"] = json!("failed");
    assert!(!live.is_valid(&bad), "class `failed`");
    // Another command's report is not this one's.
    let list = serde_json::to_value(ListReport {
        ok: true,
        processes: vec![],
    })
    .unwrap();
    assert!(validator("list").is_valid(&list));
    assert!(!live.is_valid(&list), "a list report as a live report");
}
