//! Runs and their variables.

pub mod actor;
pub mod model;
pub mod ops;
pub mod writer;

pub use actor::Runs;
