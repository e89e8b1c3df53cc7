//! `hotsplice info`: what a bundle contains.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use hotsplice_bundle::{Bundle, Hook, HookKind, ObjectPatch, PieceKind};

use crate::args::InfoArgs;
use crate::output;
use crate::{EXIT_OK, Exit};

fn describe(
    out: &mut impl Write,
    bundle: &Bundle,
    envelope: &hotsplice_bundle::Envelope,
) -> std::io::Result<()> {
    let t = &bundle.target;
    writeln!(out, "patch     {}", bundle.id)?;
    writeln!(
        out,
        "target    {} ({}{})",
        t.path,
        match t.kind {
            hotsplice_bundle::TargetKind::Executable => "executable",
            hotsplice_bundle::TargetKind::SharedLibrary => "shared library",
        },
        t.build_id
            .as_ref()
            .map(|b| format!(", build-id {b}"))
            .unwrap_or_default()
    )?;
    let p = &bundle.provenance;
    writeln!(
        out,
        "diff      {} (sha256 {})",
        p.diff_name,
        &p.diff_sha256[..16.min(p.diff_sha256.len())]
    )?;
    writeln!(
        out,
        "source    {}",
        &p.source_id[..16.min(p.source_id.len())]
    )?;
    writeln!(out, "compiler  {}", p.compiler)?;
    writeln!(out, "build     {}", p.build_command)?;
    writeln!(out, "content   sha256 {}", envelope.content_sha256)?;
    if envelope.signatures.is_empty() {
        writeln!(out, "signed    no")?;
    }
    for s in &envelope.signatures {
        writeln!(
            out,
            "signed    by key {} ({}; check and apply verify it against the trusted keys)",
            s.key_id, s.algorithm
        )?;
    }
    for o in &bundle.objects {
        writeln!(
            out,
            "{}{}",
            o.object,
            o.source_file
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        )?;
        for r in &o.replacements {
            let piece = &o.pieces[r.piece];
            writeln!(
                out,
                "  replace  {}  ({} → {} bytes{})",
                r.name,
                r.pre_code.len(),
                piece.size,
                if r.local { ", static" } else { "" }
            )?;
        }
        for f in o.functions.iter().filter(|f| f.status == "new") {
            writeln!(out, "  new      {}", f.name)?;
        }
        let (mut code, mut data) = (0u64, 0u64);
        for piece in &o.pieces {
            if piece.kind == PieceKind::Code {
                code += piece.size;
            } else {
                data += piece.size;
            }
        }
        writeln!(
            out,
            "  loads    {} pieces: {code} bytes of code, {data} bytes of data",
            o.pieces.len()
        )?;
        for b in &o.bindings {
            writeln!(
                out,
                "  static   {} uses {} → {}",
                b.function,
                b.symbol,
                b.binds_to.as_deref().unwrap_or(if b.compiler_private {
                    "a fresh copy"
                } else {
                    "a new instance"
                })
            )?;
        }
        for h in &o.hooks {
            writeln!(
                out,
                "  hook     {} {}  ({})",
                h.kind,
                hook_function(o, h),
                match h.kind {
                    HookKind::PreApply | HookKind::PreUndo => {
                        "runs in the target with every other thread stopped; may refuse"
                    }
                    HookKind::PostApply | HookKind::PostUndo => {
                        "runs in the target with every other thread stopped"
                    }
                }
            )?;
        }
    }
    for r in &bundle.refusals {
        writeln!(
            out,
            "REFUSED   {} {} ({}): {}",
            r.kind, r.symbol, r.object, r.detail
        )?;
    }
    for w in &bundle.warnings {
        writeln!(out, "warning   {w}")?;
    }
    Ok(())
}

/// The function a hook runs.
fn hook_function<'a>(object: &'a ObjectPatch, hook: &Hook) -> &'a str {
    object
        .pieces
        .get(hook.piece)
        .map(|p| p.symbol.as_deref().unwrap_or(&p.name))
        .unwrap_or("?")
}

/// Every hook of a bundle: when it runs and the function it runs.
pub fn hooks(bundle: &Bundle) -> Vec<(HookKind, String)> {
    bundle
        .objects
        .iter()
        .flat_map(|o| {
            o.hooks
                .iter()
                .map(|h| (h.kind, hook_function(o, h).to_string()))
        })
        .collect()
}

/// `hotsplice info`.
pub fn run(args: &InfoArgs) -> Result<ExitCode, Exit> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))
        .map_err(Exit::bad_input)?;
    let sealed = hotsplice_bundle::read(&bytes)
        .with_context(|| args.bundle.display().to_string())
        .map_err(Exit::bad_input)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        output::emit(
            &mut out,
            &output::InfoReport {
                envelope: &sealed.envelope,
                bundle: &sealed.bundle,
            },
        )?;
    } else {
        describe(&mut out, &sealed.bundle, &sealed.envelope)?;
    }
    Ok(ExitCode::from(EXIT_OK))
}
