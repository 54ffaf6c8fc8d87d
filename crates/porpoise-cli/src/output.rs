//! What the commands print. Standard output may be a pipe whose reader has gone
//! (`porpoise status 7 | head -1`): the command then ends quietly, as `ls | head` does, instead
//! of panicking on the broken pipe.

use std::fmt;
use std::io::Write;

use crate::client::ClientError;

/// Writes one line to standard output. A reader that went away is [`ClientError::reader_gone`];
/// any other write failure is an error naming it.
pub fn line(args: fmt::Arguments<'_>) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args).and_then(|()| out.write_all(b"\n")).map_err(write_error)
}

/// Writes raw bytes (a task's log) to standard output.
pub fn bytes(content: &[u8]) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    out.write_all(content).and_then(|()| out.flush()).map_err(write_error)
}

/// Writes one line to standard error, ignoring a failure: there is nowhere left to report it.
pub fn error_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

fn write_error(e: std::io::Error) -> ClientError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        ClientError::reader_gone()
    } else {
        ClientError::failed(format!("cannot write the output: {e}"))
    }
}

/// `println!` for commands: `outln!(...)?` returns the command's error on a failed write.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::error_line(format_args!($($arg)*))
    };
}
