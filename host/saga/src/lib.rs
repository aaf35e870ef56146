//! # ahv-saga: multi-step work with compensation
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod checkpoint;
pub mod definition;
pub mod fanout;
pub mod format;
pub mod retry;
pub mod state;
