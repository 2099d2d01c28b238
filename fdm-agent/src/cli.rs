//! What the command-line tools print, and how: `fdm-agent` and `fdmctl` (in `vcenter-shim`) share
//! their `--output` and `--log-format` words, their tables, how they write ages, and how they write
//! standard output, so that the two look and behave alike.

use std::fmt::Display;
use std::io::{self, Write};
use std::time::Duration;

/// `--output`: text for people or JSON for tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and sentences, for people.
    #[default]
    Text,
    /// JSON, for tools: the objects as the agent or the API write them.
    Json,
}

/// `--log-format`: how log lines are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text an event, with its fields as `key=value`.
    #[default]
    Text,
    /// One JSON object a line, with the event's fields as keys.
    Json,
}

/// An age for people, as precise as it is useful: `0.2 s` and `2.3 s` below ten seconds, then
/// `42 s`, `4 min`, `3 h`, `2 d` (whole units, rounded down: the age is at least that).
pub fn human_age(age: Duration) -> String {
    let secs = age.as_secs();
    if secs < 10 {
        // Tenths rounded down, so that 9.96 s is `9.9 s` and never `10.0 s`.
        let tenths = age.as_millis() / 100;
        format!("{}.{} s", tenths / 10, tenths % 10)
    } else if secs < 60 {
        format!("{secs} s")
    } else if secs < 3600 {
        format!("{} min", secs / 60)
    } else if secs < 86_400 {
        format!("{} h", secs / 3600)
    } else {
        format!("{} d", secs / 86_400)
    }
}

/// [`human_age`] of an age in seconds; `-` for one that is no age (negative, not a number).
pub fn human_age_secs(secs: f64) -> String {
    Duration::try_from_secs_f64(secs).map_or_else(|_| "-".into(), human_age)
}

/// A table for people: a header of capitals, each column as wide as its widest cell, columns two
/// spaces apart, no borders, no trailing spaces; so that it reads well and `awk`, `cut` and
/// `split_whitespace` take it apart. Built with `comfy-table` (which measures wide and combining
/// characters), configured here once for both tools.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<usize>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            ..Table::default()
        }
    }

    /// Aligns column `index` (from 0) to the right: numbers and ages.
    pub fn align_right(mut self, index: usize) -> Table {
        self.right.push(index);
        self
    }

    /// Adds a row (fewer cells than columns leave the rest empty).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// The table's lines: the header (if any) and then one line a row.
    pub fn lines(&self) -> Vec<String> {
        use comfy_table::{CellAlignment, presets::NOTHING};
        let mut t = comfy_table::Table::new();
        t.load_style(NOTHING);
        if !self.header.is_empty() {
            t.set_header(self.header.clone());
        }
        t.add_rows(self.rows.clone());
        let columns = t.column_count();
        for (i, column) in t.column_iter_mut().enumerate() {
            // Two spaces between columns; none at the left edge or after the last column.
            column.set_padding((0, if i + 1 == columns { 0 } else { 2 }));
            if self.right.contains(&i) {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        if self.header.is_empty() && self.rows.is_empty() {
            return Vec::new();
        }
        t.lines().map(|l| l.trim_end().to_string()).collect()
    }
}

/// Names and values a line each, the values lined up: `config generation  9`.
pub fn key_values<K: Display, V: Display>(pairs: impl IntoIterator<Item = (K, V)>) -> Vec<String> {
    let mut t = Table::default();
    for (k, v) in pairs {
        t.row([k.to_string(), v.to_string()]);
    }
    t.lines()
}

/// Standard output was closed under the command (`fdm-agent status | head -1`): the reader has
/// what it wanted. Commands end quietly and successfully on it (see [`finish`]).
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes `line` and a newline to standard output. Unlike `println!`, which panics there, a closed
/// pipe is an error: [`StdoutClosed`].
pub fn print_line(line: impl Display) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// [`print_line`] for each of `lines`.
pub fn print_lines<L: Display>(lines: impl IntoIterator<Item = L>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing standard output")
    }
}

/// Whether `e` is (or was caused by) a closed standard output.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<StdoutClosed>())
}

/// How a command ends: on success or a closed standard output, successfully and quietly; on
/// another error, with `prefix: error` on standard error (never a panic, also when that is closed)
/// and exit status `code`.
pub fn finish(result: anyhow::Result<()>, prefix: &str, code: u8) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if is_stdout_closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{prefix}: {e:#}");
            std::process::ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        let age = |s: f64| human_age_secs(s);
        assert_eq!(age(0.0), "0.0 s");
        assert_eq!(age(0.230732), "0.2 s");
        assert_eq!(age(2.34), "2.3 s");
        assert_eq!(age(9.96), "9.9 s");
        assert_eq!(age(10.0), "10 s");
        assert_eq!(age(59.9), "59 s");
        assert_eq!(age(60.0), "1 min");
        assert_eq!(age(240.0), "4 min");
        assert_eq!(age(3599.0), "59 min");
        assert_eq!(age(7300.0), "2 h");
        assert_eq!(age(3.5 * 86_400.0), "3 d");
        assert_eq!(age(-1.0), "-");
        assert_eq!(age(f64::NAN), "-");
        assert_eq!(human_age(Duration::from_millis(651)), "0.6 s");
    }

    #[test]
    fn tables_line_up_without_borders_or_trailing_spaces() {
        let mut t = Table::new(["HOST", "VERDICT", "AGE"]).align_right(2);
        t.row(["host-1", "alive", "0.2 s"]);
        t.row(["host-10", "dead", "4 min"]);
        t.row(["host-2", "", ""]);
        assert_eq!(
            t.lines(),
            [
                "HOST     VERDICT    AGE",
                "host-1   alive    0.2 s",
                "host-10  dead     4 min",
                "host-2",
            ]
        );
        // Wide characters count as two columns.
        let mut t = Table::new(["NAME", "X"]);
        t.row(["日本", "1"]);
        t.row(["ab", "2"]);
        assert_eq!(t.lines(), ["NAME  X", "日本  1", "ab    2"]);
        assert_eq!(Table::new(["A", "B"]).lines(), ["A  B"]);
        assert!(Table::default().lines().is_empty());
    }

    #[test]
    fn key_values_line_up_their_values() {
        assert_eq!(
            key_values([("role", "master"), ("config generation", "9")]),
            ["role               master", "config generation  9"]
        );
    }

    #[test]
    fn a_closed_stdout_is_told_apart_from_other_errors() {
        let closed = stdout_error(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(is_stdout_closed(&closed));
        assert!(is_stdout_closed(&closed.context("printing the status")));
        let other = stdout_error(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!is_stdout_closed(&other));
        // A broken pipe anywhere else (a server that hung up) is an error like any other.
        let server = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_stdout_closed(&server));
    }
}
