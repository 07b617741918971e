//! A progress bar on stderr (hidden when stderr is not a terminal) and notes that print
//! above it.

use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Starts the bar with `steps` planned steps.
pub fn start(steps: u64) {
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
    let _ = BAR.set(bar);
}

/// Says what runs now.
pub fn stage(msg: impl Into<String>) {
    let msg = msg.into();
    match BAR.get() {
        Some(b) if !b.is_hidden() => b.set_message(msg),
        _ => eprintln!("{msg}"),
    }
}

/// One planned step done.
pub fn step() {
    if let Some(b) = BAR.get() {
        b.inc(1);
    }
}

/// A line above the bar (or on stderr when the bar is hidden).
pub fn note(msg: impl AsRef<str>) {
    match BAR.get() {
        Some(b) if !b.is_hidden() => b.println(msg.as_ref()),
        _ => eprintln!("{}", msg.as_ref()),
    }
}

/// Removes the bar.
pub fn finish() {
    if let Some(b) = BAR.get() {
        b.finish_and_clear();
    }
}
