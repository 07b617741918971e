//! The user's side of the client: where typed lines come from, where replies, timeline
//! entries and notices go, and the signals that ask it to stop.
//!
//! Two kinds of console, chosen once at start:
//!
//! - **Pipes** (stdin or stdout is not a terminal, or the terminal cannot edit lines):
//!   lines are read as bytes and checked to be UTF-8 (a line that is not is refused on
//!   stderr and skipped), `Cmd> ` is written to stdout before each command, replies and
//!   entries go to stdout one line at a time, notices to stderr. Scripts and tests rely on
//!   this output byte for byte.
//! - **Terminal** (stdin and stdout are both terminals): lines are edited with rustyline
//!   (arrows, Home/End, Ctrl-A/E/U/W, history within the session) on a thread of their
//!   own; everything printed while a line is being typed goes through rustyline's
//!   external printer, which draws it above the line and redraws the line intact.
//!   Notices go the same way when stderr is the terminal too.
//!
//! Both hand the rest of the client [`Event`]s through [`Input::next`], which reads a
//! line only when asked: the timeline stops asking while too many posts are in flight,
//! and then stdin is not read at all (a pipe writer waits).
//!
//! # Layout
//! - this file: [`Event`]s and [`Input`], [`Output`], the pipe console, and [`Stop`].
//! - `console/terminal.rs`: the terminal console (line editor and printer threads).

mod terminal;

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::{mpsc, oneshot, watch};

/// Lines read ahead of the client from a pipe.
const LINE_QUEUE: usize = 64;
/// Longest line kept from a pipe; the rest of a longer line is counted and dropped (the
/// line is refused: no command or post is that long).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What the user did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A line, without its line ending.
    Line(String),
    /// End of input (or Ctrl-D on an empty line).
    End,
    /// Ctrl-C at the terminal.
    Interrupt,
}

/// What the client is asking for, which decides the terminal's prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A command, after `Cmd> `.
    Command,
    /// A post, in the timeline.
    Post,
}

impl Ask {
    fn prompt(self) -> &'static str {
        match self {
            Ask::Command => "Cmd> ",
            Ask::Post => "Post> ",
        }
    }
}

/// Sets up the console for this process's stdin and stdout.
pub fn open() -> (Input, Output) {
    if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        match terminal::open() {
            Ok(t) => return t,
            Err(e) => tracing::debug!("line editing unavailable, reading lines plainly: {e}"),
        }
    }
    (Input::pipe(tokio::io::stdin()), Output::pipe())
}

// ---------------------------------------------------------------------------------------
// Output

/// Where the client prints; cheap to clone.
#[derive(Debug, Clone)]
pub struct Output {
    sink: Arc<Sink>,
}

#[derive(Debug)]
enum Sink {
    Pipe,
    Terminal(terminal::TerminalOut),
}

impl Output {
    fn pipe() -> Output {
        Output {
            sink: Arc::new(Sink::Pipe),
        }
    }

    /// Whether this is an interactive terminal (line editing, banner, own posts shown).
    pub fn is_terminal(&self) -> bool {
        matches!(*self.sink, Sink::Terminal(_))
    }

    /// Prints a line on stdout (flushed: scripts read stdout line by line).
    pub fn line(&self, line: &str) {
        if let Sink::Terminal(t) = &*self.sink {
            if t.print(line) {
                return;
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Prints a notice for the user (reconnecting, giving up, refused input): on stderr,
    /// or above the line being typed when stderr is the same terminal.
    pub fn notice(&self, line: &str) {
        if let Sink::Terminal(t) = &*self.sink {
            if t.notices_here && t.print(line) {
                return;
            }
        }
        eprintln!("{line}");
    }

    /// Waits until every line handed to [`Output::line`] and [`Output::notice`] so far
    /// has been written (they are written by a thread of their own on a terminal).
    pub async fn flush(&self) {
        if let Sink::Terminal(t) = &*self.sink {
            let (tx, rx) = oneshot::channel();
            if t.send(terminal::Print::Flush(tx)) {
                let _ = rx.await;
            }
        }
    }

    /// Gives the terminal back before the client exits (a line may be in the middle of
    /// being edited): prints what is queued, restores the terminal's settings and ends
    /// the half-typed line. Later output is written directly. Idempotent.
    pub async fn leave_terminal(&self) {
        let Sink::Terminal(t) = &*self.sink else {
            return;
        };
        self.flush().await;
        t.leave();
    }
}

// ---------------------------------------------------------------------------------------
// Input

/// Where typed lines come from.
#[derive(Debug)]
pub struct Input {
    source: Source,
    /// Whether a line was asked for and not yet received (a cancelled [`Input::next`]
    /// leaves the question standing, so the next call does not ask twice).
    asked: bool,
}

#[derive(Debug)]
enum Source {
    Pipe(mpsc::Receiver<Event>),
    Terminal {
        ask: std::sync::mpsc::Sender<Ask>,
        events: mpsc::Receiver<Event>,
        out: Output,
    },
}

impl Input {
    /// Lines from a byte stream (stdin when it is a pipe), read by a task of their own
    /// at most [`LINE_QUEUE`] lines ahead of the client.
    pub fn pipe<R>(reader: R) -> Input
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(LINE_QUEUE);
        tokio::spawn(read_lines(tokio::io::BufReader::new(reader), tx));
        Input {
            source: Source::Pipe(rx),
            asked: false,
        }
    }

    /// The next thing the user did. Cancel-safe.
    pub async fn next(&mut self, what: Ask) -> Event {
        match &mut self.source {
            Source::Pipe(rx) => {
                if !self.asked && what == Ask::Command {
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "Cmd> ");
                    let _ = out.flush();
                }
                self.asked = true;
                let event = rx.recv().await.unwrap_or(Event::End);
                self.asked = false;
                event
            }
            Source::Terminal { ask, events, out } => {
                if !self.asked {
                    // Replies printed so far must be on the screen before the prompt.
                    out.flush().await;
                    if ask.send(what).is_err() {
                        return Event::End;
                    }
                    self.asked = true;
                }
                let event = events.recv().await.unwrap_or(Event::End);
                self.asked = false;
                event
            }
        }
    }
}

/// Reads lines until end of input, refusing (on stderr) those that are not UTF-8 or are
/// longer than [`MAX_LINE_BYTES`]; a read error ends input like end of file.
async fn read_lines<R: AsyncBufRead + Unpin>(mut reader: R, tx: mpsc::Sender<Event>) {
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        let len = match read_line_capped(&mut reader, &mut buf, MAX_LINE_BYTES).await {
            Ok(Some(len)) => len,
            Ok(None) => break,
            Err(e) => {
                eprintln!("tsn_client: reading input failed: {e}; treating it as end of input");
                break;
            }
        };
        number += 1;
        if len > MAX_LINE_BYTES {
            eprintln!(
                "tsn_client: line {number} refused: {len} bytes is longer than any command or post"
            );
            continue;
        }
        match String::from_utf8(std::mem::take(&mut buf)) {
            Ok(line) => {
                if tx.send(Event::Line(line)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                buf = e.into_bytes();
                eprintln!(
                    "tsn_client: line {number} refused: not valid UTF-8 (byte 0x{:02x} at position {})",
                    buf[at],
                    at + 1
                );
            }
        }
    }
    let _ = tx.send(Event::End).await;
}

/// Reads one line into `buf` without its `\n` (or `\r\n`), keeping at most `cap` bytes.
/// Returns the line's full length (more than `cap` when bytes were dropped), or `None` at
/// end of input. A last line without a newline counts as a line.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, found) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let keep = part.len().min(cap.saturating_sub(buf.len()));
        buf.extend_from_slice(&part[..keep]);
        len += part.len();
        let used = part.len() + usize::from(found);
        reader.consume(used);
        if found {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    if len <= cap && buf.last() == Some(&b'\r') {
        buf.pop();
        len -= 1;
    }
    Ok(Some(len))
}

// ---------------------------------------------------------------------------------------
// Signals

/// SIGINT or SIGTERM arrived: the client should leave, as soon as its posts are stored.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Starts listening for SIGINT and SIGTERM (from then on they no longer kill the
    /// process at once).
    pub fn listen() -> std::io::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
            // Keep the handlers installed: a second signal must not kill the client
            // while it waits for its posts.
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
        });
        Ok(Stop(rx))
    }

    /// A `Stop` that never fires.
    pub fn never() -> Stop {
        // With the sender gone, `wait` never resolves.
        Stop(watch::channel(false).1)
    }

    /// Resolves once a signal has arrived. Cancel-safe.
    pub async fn wait(&mut self) {
        if self.0.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn lines_of(bytes: &'static [u8], cap: usize) -> Vec<(Vec<u8>, usize)> {
        let mut r = tokio::io::BufReader::with_capacity(4, bytes);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_line_capped(&mut r, &mut buf, cap).await.unwrap() {
                Some(len) => out.push((buf, len)),
                None => return out,
            }
        }
    }

    #[tokio::test]
    async fn lines_are_split_on_newlines_and_capped() {
        let got = lines_of(b"ab\r\n\ncdefghij\nlast", 5).await;
        assert_eq!(
            got,
            vec![
                (b"ab".to_vec(), 2),
                (b"".to_vec(), 0),
                (b"cdefg".to_vec(), 8),
                (b"last".to_vec(), 4),
            ]
        );
        assert!(lines_of(b"", 5).await.is_empty());
    }

    #[tokio::test]
    async fn a_line_that_is_not_utf8_is_skipped_and_input_goes_on() {
        let mut input = Input::pipe(&b"TIMELINE\nbefore\n\xff x\nafter\n"[..]);
        let mut got = Vec::new();
        loop {
            match input.next(Ask::Post).await {
                Event::Line(l) => got.push(l),
                Event::End => break,
                Event::Interrupt => unreachable!(),
            }
        }
        assert_eq!(got, ["TIMELINE", "before", "after"]);
    }
}
