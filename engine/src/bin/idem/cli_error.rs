//! The error the tool prints: a message with what it was doing, built from idem, I/O and
//! protocol failures. Printed with its `Display`, never as a panic or a `Debug` dump.

use std::fmt;

/// A failure of a subcommand, ready to print.
#[derive(Debug)]
pub struct CliError(String);

pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        CliError(message.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<idem::Error> for CliError {
    fn from(error: idem::Error) -> Self {
        CliError(error.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(error: std::io::Error) -> Self {
        CliError(error.to_string())
    }
}

/// Adds what the tool was doing to an error: `"opening the ledger: No such file or directory"`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> CliResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> CliResult<T> {
        self.map_err(|error| CliError(format!("{what}: {error}")))
    }
}
