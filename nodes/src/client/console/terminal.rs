//! The terminal console: rustyline edits lines on a thread of its own, and a printer
//! thread draws every line printed meanwhile above the line being typed.

use crate::Locked;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{Ask, Event, Input, Output, Sink, Source};

/// Lines waiting for the terminal printer; more make the printing task wait for it.
const PRINT_QUEUE: usize = 1024;
/// Lines remembered for recall with the arrow keys.
const HISTORY: usize = 1000;

/// The output side of a terminal console: lines go to the printer thread.
#[derive(Debug)]
pub(super) struct TerminalOut {
    /// Lines for the printer thread; `None` once the terminal was left.
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Print>>>,
    /// Whether notices share the terminal (stderr is the terminal too).
    pub(super) notices_here: bool,
    /// Set by the line editor while it has the terminal in raw mode.
    editing: Arc<AtomicBool>,
    /// The terminal's settings before the line editor changed them.
    saved: Mutex<Option<nix::sys::termios::Termios>>,
}

/// What the printer thread is handed.
pub(super) enum Print {
    Line(String),
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for Print {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Print::Line(l) => f.debug_tuple("Line").field(l).finish(),
            Print::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl TerminalOut {
    /// Queues a line for the printer; false once the terminal was left.
    pub(super) fn print(&self, line: &str) -> bool {
        self.send(Print::Line(line.to_string()))
    }

    pub(super) fn send(&self, p: Print) -> bool {
        let queue = self.queue.locked().clone();
        // A full queue means the terminal is slower than the lines come: waiting here is
        // the same back-pressure a blocking write to stdout gives on a pipe.
        queue.is_some_and(|q| q.send(p).is_ok())
    }

    /// Gives the terminal back: no more lines for the printer; if a line was being
    /// edited, the terminal's settings restored and the half-typed line ended.
    pub(super) fn leave(&self) {
        let was_open = self.queue.locked().take().is_some();
        if was_open && self.editing.load(Ordering::SeqCst) {
            if let Some(saved) = &*self.saved.locked() {
                let _ = nix::sys::termios::tcsetattr(
                    std::io::stdin(),
                    nix::sys::termios::SetArg::TCSANOW,
                    saved,
                );
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            let _ = out.flush();
        }
        // Keys typed that nobody will read are dropped, not left for the shell.
        let _ = nix::sys::termios::tcflush(std::io::stdin(), nix::sys::termios::FlushArg::TCIFLUSH);
    }
}

/// The console of a terminal: a line editor for input, its printer for output.
pub(super) fn open() -> anyhow::Result<(Input, Output)> {
    use rustyline::config::Config;
    let config = Config::builder()
        .auto_add_history(true)
        .history_ignore_dups(true)?
        .max_history_size(HISTORY)?
        // Pasted lines are taken one by one, as if typed; and nothing is left to undo
        // on the terminal if the client exits while a line is being edited.
        .bracketed_paste(false)
        .build();
    let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    let mut editor = rustyline::DefaultEditor::with_config(config)?;
    let printer = editor.create_external_printer()?;
    let (print_tx, print_rx) = std::sync::mpsc::sync_channel(PRINT_QUEUE);
    std::thread::Builder::new()
        .name("tsn-print".into())
        .spawn(move || print_lines(printer, print_rx))?;
    let editing = Arc::new(AtomicBool::new(false));
    let out = Output {
        sink: Arc::new(Sink::Terminal(TerminalOut {
            queue: Mutex::new(Some(print_tx)),
            notices_here: std::io::stderr().is_terminal(),
            editing: editing.clone(),
            saved: Mutex::new(saved),
        })),
    };
    let (ask_tx, ask_rx) = std::sync::mpsc::channel();
    let (event_tx, event_rx) = mpsc::channel(1);
    let notices = out.clone();
    std::thread::Builder::new()
        .name("tsn-readline".into())
        .spawn(move || edit_lines(editor, ask_rx, event_tx, editing, notices))?;
    let input = Input {
        source: Source::Terminal {
            ask: ask_tx,
            events: event_rx,
            out: out.clone(),
        },
        asked: false,
    };
    Ok((input, out))
}

fn print_lines(mut printer: impl rustyline::ExternalPrinter, rx: std::sync::mpsc::Receiver<Print>) {
    while let Ok(p) = rx.recv() {
        match p {
            Print::Line(line) => {
                if printer.print(format!("{line}\n")).is_err() {
                    let _ = writeln!(std::io::stdout(), "{line}");
                }
            }
            Print::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The line editor's thread: one line per question, until end of input.
fn edit_lines(
    mut editor: rustyline::DefaultEditor,
    ask: std::sync::mpsc::Receiver<Ask>,
    events: mpsc::Sender<Event>,
    editing: Arc<AtomicBool>,
    out: Output,
) {
    use rustyline::error::ReadlineError;
    while let Ok(what) = ask.recv() {
        let event = loop {
            editing.store(true, Ordering::SeqCst);
            let got = editor.readline(what.prompt());
            editing.store(false, Ordering::SeqCst);
            match got {
                Ok(line) => break Event::Line(line),
                Err(ReadlineError::Eof) => break Event::End,
                Err(ReadlineError::Interrupted) => break Event::Interrupt,
                Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    out.notice("tsn_client: line refused: not valid UTF-8");
                }
                Err(ReadlineError::Signal(_)) => {}
                Err(e) => {
                    out.notice(&format!(
                        "tsn_client: reading the terminal failed: {e}; treating it as end of input"
                    ));
                    break Event::End;
                }
            }
        };
        let end = event == Event::End;
        if events.blocking_send(event).is_err() || end {
            return;
        }
    }
}
