//! Scripts, their versions and audit trail.

pub mod actor;
pub mod model;
pub mod ops;

pub use actor::Scripts;
