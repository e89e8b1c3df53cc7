//! `hotsplice diff`: which functions of two builds really changed, and can it go in live.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use hotsplice_objdiff::{ObjectDiff, Report, Status, diff_objects};

use crate::args::DiffArgs;
use crate::output;
use crate::{EXIT_OK, EXIT_REFUSED, Exit};

/// One pre/post pair to compare: a relative name and the two paths (absent on one side when
/// the object exists in one build only).
struct Pair {
    name: String,
    pre: Option<PathBuf>,
    post: Option<PathBuf>,
}

fn objects_under(root: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("reading directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading directory {}", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("inspecting {}", path.display()))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "o") {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                found.insert(relative);
            }
        }
    }
    Ok(found)
}

fn pairs(pre: &Path, post: &Path) -> Result<Vec<Pair>, Exit> {
    let meta = |p: &Path| {
        std::fs::metadata(p)
            .with_context(|| format!("cannot read {}", p.display()))
            .map_err(Exit::bad_input)
    };
    let (pre_meta, post_meta) = (meta(pre)?, meta(post)?);
    match (pre_meta.is_dir(), post_meta.is_dir()) {
        (false, false) => {
            let name = post
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| post.display().to_string());
            Ok(vec![Pair {
                name,
                pre: Some(pre.to_path_buf()),
                post: Some(post.to_path_buf()),
            }])
        }
        (true, true) => {
            let pre_set = objects_under(pre).map_err(Exit::bad_input)?;
            let post_set = objects_under(post).map_err(Exit::bad_input)?;
            if pre_set.is_empty() && post_set.is_empty() {
                return Err(Exit::bad_input(anyhow!(
                    "no .o files under {} or {}",
                    pre.display(),
                    post.display()
                )));
            }
            Ok(pre_set
                .union(&post_set)
                .map(|rel| Pair {
                    name: rel.display().to_string(),
                    pre: pre_set.contains(rel).then(|| pre.join(rel)),
                    post: post_set.contains(rel).then(|| post.join(rel)),
                })
                .collect())
        }
        _ => Err(Exit::bad_input(anyhow!(
            "give two object files or two directories, not one of each ({} and {})",
            pre.display(),
            post.display()
        ))),
    }
}

/// Diffs every pair into a report. Unreadable or malformed input is a bad-input error naming
/// the file.
fn diff_pairs(pairs: &[Pair]) -> Result<Report, Exit> {
    let mut report = Report::default();
    for pair in pairs {
        let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, Exit> {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p)
                        .with_context(|| format!("cannot read {}", p.display()))
                        .map_err(Exit::bad_input)
                })
                .transpose()
        };
        let (pre, post) = (read(&pair.pre)?, read(&pair.post)?);
        let diff = diff_objects(&pair.name, pre.as_deref(), post.as_deref()).map_err(|e| {
            let path = match &e {
                hotsplice_objdiff::Error::InBuild {
                    side: hotsplice_objdiff::Side::Pre,
                    ..
                } => pair.pre.as_ref(),
                _ => pair.post.as_ref(),
            };
            let path = path.map(|p| p.display().to_string()).unwrap_or_default();
            Exit::bad_input(anyhow::Error::new(e).context(path))
        })?;
        report.objects.push(diff);
    }
    Ok(report)
}

/// `hotsplice diff`.
pub fn run(args: &DiffArgs) -> Result<ExitCode, Exit> {
    let pairs = pairs(&args.pre, &args.post)?;
    let report = diff_pairs(&pairs)?;
    let mut out = io::stdout().lock();
    if args.json {
        output::emit(&mut out, &to_report(&report))?;
    } else {
        write_human(&mut out, &report, args.all)?;
    }
    Ok(ExitCode::from(if report.patchable() {
        EXIT_OK
    } else {
        EXIT_REFUSED
    }))
}

/// The report as the documented JSON object.
pub fn to_report(report: &Report) -> output::DiffReport {
    let mut functions = Vec::new();
    let mut data = Vec::new();
    let mut bindings = Vec::new();
    let mut refusals = Vec::new();
    let mut warnings = Vec::new();
    for o in &report.objects {
        for f in &o.functions {
            functions.push(output::DiffFunction {
                name: f.name.clone(),
                object: o.object.clone(),
                status: f.status.as_str().to_string(),
                reasons: f.reasons.clone(),
                global: f.global,
                parent: f.parent.clone(),
                clone: f.clone.map(|c| c.as_str().to_string()),
                pre_name: f.pre_name.clone(),
            });
        }
        for d in &o.data {
            data.push(output::DiffData {
                name: d.name.clone(),
                object: o.object.clone(),
                status: d.status.as_str().to_string(),
                kind: d.kind.as_str().to_string(),
                compiler_private: d.compiler_private,
                reasons: d.reasons.clone(),
                pre_name: d.pre_name.clone(),
            });
        }
        for b in &o.bindings {
            bindings.push(output::DiffBinding {
                function: b.function.clone(),
                symbol: b.symbol.clone(),
                object: o.object.clone(),
                binds_to: b.existing.clone(),
                compiler_private: b.compiler_private,
            });
        }
        for r in &o.refusals {
            refusals.push(output::Refusal {
                kind: r.kind.as_str().to_string(),
                symbol: r.symbol.clone(),
                object: o.object.clone(),
                detail: r.detail.clone(),
                functions: r.functions.clone(),
            });
        }
        for w in &o.warnings {
            warnings.push(output::DiffWarning {
                object: o.object.clone(),
                warning: w.clone(),
            });
        }
    }
    output::DiffReport {
        functions,
        data,
        bindings,
        refusals,
        warnings,
        summary: output::DiffSummary {
            objects: report.objects.len(),
            changed: report.count_functions(Status::Changed),
            new: report.count_functions(Status::New),
            removed: report.count_functions(Status::Removed),
            unchanged: report.count_functions(Status::Unchanged),
        },
        patchable: report.patchable(),
    }
}

fn write_object(out: &mut impl Write, o: &ObjectDiff, all: bool) -> io::Result<()> {
    writeln!(out, "{}", o.object)?;
    for f in &o.functions {
        if f.status == Status::Unchanged && !all {
            continue;
        }
        let mut name = f.name.clone();
        if let Some(pre) = &f.pre_name {
            name = format!("{name} (was {pre})");
        }
        if let (Some(parent), Some(clone)) = (&f.parent, f.clone) {
            name = format!("{name} [{} of {parent}]", clone.as_str());
        }
        writeln!(out, "  {:<9} function  {name}", f.status.as_str())?;
        for reason in &f.reasons {
            writeln!(out, "            {reason}")?;
        }
    }
    for d in &o.data {
        if d.status == Status::Unchanged && !all {
            continue;
        }
        writeln!(
            out,
            "  {:<9} {:<8}  {}",
            d.status.as_str(),
            d.kind.as_str(),
            d.name
        )?;
        for reason in &d.reasons {
            writeln!(out, "            {reason}")?;
        }
    }
    for b in &o.bindings {
        let target = match (&b.existing, b.compiler_private) {
            (_, true) => "a fresh copy (compiler-private)".to_string(),
            (Some(existing), false) => format!("the existing {existing} (state kept)"),
            (None, false) => "a new instance (no existing static matches)".to_string(),
        };
        writeln!(
            out,
            "  static    {} uses {} → {target}",
            b.function, b.symbol
        )?;
    }
    for r in &o.refusals {
        writeln!(
            out,
            "  REFUSED   {} {}: {}",
            r.kind.as_str(),
            r.symbol,
            r.detail
        )?;
    }
    for w in &o.warnings {
        writeln!(out, "  warning   {w}")?;
    }
    Ok(())
}

/// The report for humans: only what changed unless `all`.
pub fn write_human(out: &mut impl Write, report: &Report, all: bool) -> io::Result<()> {
    let mut quiet = 0;
    for o in &report.objects {
        if !all && !o.has_changes() && o.refusals.is_empty() && o.warnings.is_empty() {
            quiet += 1;
            continue;
        }
        write_object(out, o, all)?;
    }
    if quiet > 0 {
        writeln!(out, "({quiet} object(s) without changes not shown)")?;
    }
    let refusals: usize = report.objects.iter().map(|o| o.refusals.len()).sum();
    let summary = format!(
        "{} changed, {} new, {} removed, {} unchanged functions in {} object(s)",
        report.count_functions(Status::Changed),
        report.count_functions(Status::New),
        report.count_functions(Status::Removed),
        report.count_functions(Status::Unchanged),
        report.objects.len()
    );
    if report.patchable() {
        writeln!(out, "patchable: {summary}")
    } else {
        writeln!(out, "REFUSED ({refusals} refusal(s)): {summary}")
    }
}
