//! Exit codes the client verbs promise to scripts, and the error that carries one.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done: the job, dataset or run finished successfully (or the listing printed) |
//! | 1 | failed: it ended failed, or any other error |
//! | 2 | usage: bad arguments (clap's own code) |
//! | 3 | cancelled: it ended cancelled |
//! | 4 | not found: no such dataset, job, run or model |
//! | 5 | server unreachable: nothing answered at `--url` / `TRAINYARD_URL` |
//! | 6 | refused: the API answered 4xx/5xx to the request (its message is printed) |
use std::fmt;

pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const CANCELLED: i32 = 3;
pub const NOT_FOUND: i32 = 4;
pub const UNREACHABLE: i32 = 5;
pub const REFUSED: i32 = 6;

/// An error with the exit code the process should end with.
#[derive(Debug)]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

impl fmt::Display for ExitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitError {}

pub fn exit_error(code: i32, message: impl Into<String>) -> anyhow::Error {
    ExitError {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code for an error from a client verb.
pub fn code_of(error: &anyhow::Error) -> i32 {
    if let Some(e) = error.downcast_ref::<ExitError>() {
        return e.code;
    }
    if let Some(e) = error.downcast_ref::<reqwest::Error>() {
        if e.is_connect() || e.is_timeout() {
            return UNREACHABLE;
        }
    }
    FAILED
}

/// The code for a finished thing's final status.
pub fn for_status(status: &str) -> i32 {
    match status {
        "ready" | "succeeded" => 0,
        "cancelled" => CANCELLED,
        _ => FAILED,
    }
}
