//! `trackway-runtime`: what every room of the relay shares, and nothing about PostgreSQL, Redis or
//! positions.
//!
//! - [`Shutdown`]: the one signal every task listens to (each subsystem gets a child of it).
//! - [`backoff`]: retry delays and the up/down state of a backend, logged once per change.
//! - [`supervise`]: every task runs until shutdown; one that ends before it ends the relay.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod supervise;

pub use tokio_util::sync::CancellationToken as Shutdown;

pub use crate::{
    backoff::{BackendState, Backoff},
    supervise::Ended,
};
