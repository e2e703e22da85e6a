//! A progress line on standard error for commands that work for a while
//! (an export, a verification): redrawn in place a few times a second,
//! cleared when the work ends, so what is left on the terminal is the
//! command's own summary. Shown only when standard error is a terminal —
//! a script or a pipe gets nothing it did not ask for — unless
//! `KEYTRAIL_PROGRESS` says otherwise (`always`, `never`; `auto` is the
//! default).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the line is redrawn at most.
const EVERY: Duration = Duration::from_millis(250);

/// Whether a progress line is wanted: `KEYTRAIL_PROGRESS`, else whether
/// standard error is a terminal.
pub fn wanted() -> anyhow::Result<bool> {
    match std::env::var("KEYTRAIL_PROGRESS").as_deref() {
        Err(_) | Ok("auto") | Ok("") => Ok(std::io::stderr().is_terminal()),
        Ok("always") => Ok(true),
        Ok("never") => Ok(false),
        Ok(other) => Err(super::usage(format!("KEYTRAIL_PROGRESS `{other}`: give auto, always or never"))),
    }
}

/// Counts what a long command has done and shows it.
pub struct Progress {
    what: &'static str,
    shown: bool,
    started: Instant,
    drawn_at: Option<Instant>,
    bytes: u64,
    lines: u64,
}

impl Progress {
    /// A progress line about `what` (`exporting`; the lines of
    /// [`Progress::report`] say their own), shown if `shown`.
    pub fn new(what: &'static str, shown: bool) -> Progress {
        Progress { what, shown, started: Instant::now(), drawn_at: None, bytes: 0, lines: 0 }
    }

    /// Another piece of output has been written.
    pub fn wrote(&mut self, piece: &[u8]) {
        self.bytes += piece.len() as u64;
        self.lines += memchr::memchr_iter(b'\n', piece).count() as u64;
        if self.shown && self.drawn_at.is_none_or(|at| at.elapsed() >= EVERY) {
            self.draw();
        }
    }

    /// Shows `line` (given the seconds since the work began) if the line
    /// is due for a redraw: for work counted in its own units.
    pub fn report(&mut self, line: impl FnOnce(f64) -> String) {
        if self.shown && self.drawn_at.is_none_or(|at| at.elapsed() >= EVERY) {
            let text = line(self.started.elapsed().as_secs_f64());
            self.draw_text(&text);
        }
    }

    /// The line as it reads now.
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let mb = self.bytes as f64 / 1_000_000.0;
        let rate = if secs > 0.0 { mb / secs } else { 0.0 };
        format!("{}: {mb:.1} MB, {} lines, {secs:.0} s ({rate:.1} MB/s)", self.what, self.lines)
    }

    fn draw(&mut self) {
        let text = self.line();
        self.draw_text(&text);
    }

    fn draw_text(&mut self, text: &str) {
        // `\r` back to the line's start, `ESC [K` clears what a longer line left.
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}\x1b[K");
        let _ = err.flush();
        self.drawn_at = Some(Instant::now());
    }

    /// The work has ended: the line is cleared (the command prints its own
    /// summary after it).
    pub fn finish(&mut self) {
        if self.drawn_at.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn_at = None;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error ends the work too: its message starts on a clean line.
        self.finish();
    }
}

/// A writer that tells a [`Progress`] what passes through it.
pub struct Counted<'p, W: Write> {
    pub inner: W,
    pub progress: &'p mut Progress,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.wrote(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_lines_through_the_writer() {
        let mut progress = Progress::new("exporting", false);
        let mut out = Vec::new();
        {
            let mut counted = Counted { inner: &mut out, progress: &mut progress };
            counted.write_all(b"a,b\n1,2\n").unwrap();
            counted.write_all(b"3,4").unwrap();
        }
        assert_eq!(out, b"a,b\n1,2\n3,4");
        assert_eq!((progress.bytes, progress.lines), (11, 2));
        assert!(progress.line().starts_with("exporting: 0.0 MB, 2 lines, "), "{}", progress.line());
        // Not shown: never drawn, so nothing to clear.
        assert!(progress.drawn_at.is_none());
    }
}
