//! `check`: a dry run. Everything apply does before its first write (matching, symbol
//! resolution), and one look at the threads, from which it predicts what apply would do now:
//! apply, wait for a thread to leave a replaced function, retry, or refuse.

use hotsplice_bundle::Bundle;

use crate::apply::{check_bundle, function_reports, idle_ranges, plan, same_build};
use crate::safety::{self, Busy, How};
use crate::state::StateDir;
use crate::switch::{self, Decision, PauseLog};
use crate::{Error, Options, Prediction, ProcessReport, target};

/// What apply would do with a thread found busy now.
pub fn predict(busy: &Busy, options: &Options) -> Prediction {
    let attempts = options.retries + 1;
    let window = options.retry_delay * options.retries;
    if busy.main_loop() {
        return Prediction {
            action: "refuse",
            detail: format!(
                "{busy}, called from that thread's outermost frames: it looks like its main loop, which never returns; apply would retry {attempts} times over {:.1} s and refuse if it stays",
                window.as_secs_f64()
            ),
        };
    }
    if busy.blocked || matches!(busy.how, How::StackWord(_)) {
        return Prediction {
            action: "retry",
            detail: format!(
                "{busy}; apply would stop again up to {attempts} times over {:.1} s, and refuse if it stays",
                window.as_secs_f64()
            ),
        };
    }
    Prediction {
        action: "wait",
        detail: format!(
            "{busy} (runnable); apply would let it run alone until it leaves (up to {} µs per stop)",
            options.let_run.as_micros()
        ),
    }
}

/// `hotsplice check`.
pub fn check(
    bundle: &Bundle,
    pids: &[i32],
    options: &Options,
    pauses: &mut PauseLog,
) -> Result<Vec<ProcessReport>, Error> {
    check_bundle(bundle)?;
    let dir = StateDir::open(&options.state_dir)?;
    let mut spaces = target::open(pids)?;
    let _lock = target::lock(&dir, &spaces, options)?;
    let mut reports = Vec::new();
    for space in &mut spaces {
        let plan = plan(bundle, space, &dir)?;
        let prepared = &plan.prepared;
        let ranges = idle_ranges(prepared);
        let cfi = &plan.cfi;
        let mut mine = PauseLog::new();
        let decision = switch::look(
            space,
            cfi,
            options,
            &mut mine,
            &mut |views| match safety::check(views, &ranges) {
                Some(busy) => Decision::Busy(busy),
                None => Decision::Write(Vec::new()),
            },
        )?;
        pauses.merge(&mine);
        let pid = space.primary().pid();
        reports.push(ProcessReport {
            pid,
            sharers: space.pids()[1..].to_vec(),
            module: prepared.module.path.clone(),
            patch: bundle.id.clone(),
            functions: function_reports(prepared),
            pause: mine.longest(),
            stops: mine.stops,
            per_thread: mine.per_thread(),
            windows: mine.windows.clone(),
            attempts: 0,
            threads: mine.threads(),
            realtime: mine.realtime,
            same_build: same_build(prepared),
            hooks: Vec::new(),
            warnings: Vec::new(),
            shadows: None,
            prediction: match decision {
                Decision::Busy(busy) => Some(predict(&busy, options)),
                Decision::Write(_) => None,
            },
        });
    }
    Ok(reports)
}
